"""Encoder throughput: a ViT-L/16 with UNI's architecture (random weights) on 224 px windows.

What it measures, per batch size:

* ``model``: the network alone on device-resident, normalised input (bf16 autocast and
  channels_last on CUDA, timm's fused ``F.scaled_dot_product_attention``; ``--compile`` adds
  ``torch.compile``): windows/s, achieved TFLOP/s and the fraction of the GPU's bf16 peak.
* ``forward``: :meth:`TimmEncoder._forward` on a pinned uint8 batch (host-to-device copy,
  normalisation on the device, forward, embeddings back to the host).
* ``embed_windows``: the real end-to-end path of :mod:`napari_trihrge.features.vit`: 112 um
  windows (224 px at 0.5 um/px) read from a :class:`TissueImage` by CPU threads while the
  previous batch runs on the device (pinned memory on CUDA).
* ``reader``: the CPU window reading alone (the ceiling ``embed_windows`` cannot exceed).

FLOPs: counted once with ``torch.utils.flop_counter.FlopCounterMode`` on one batch (matmuls,
convolutions and the fused attention kernels on CUDA) and, for reference, the analytic count
``L * (24 * tokens * D^2 + 4 * tokens^2 * D) + 2 * 196 * 768 * D`` (qkv, projection and MLP
matmuls, attention scores and values, patch embedding; norms/activations left out; about 123
GFLOP for ViT-L/16 at 224 px). Achieved TFLOP/s uses the counted
figure when it is available and at least the analytic one's 90 %, else the analytic one (the CPU
attention kernel is not counted by FlopCounterMode).

On a machine without CUDA it runs a tiny configuration (float32, a few windows) only to check
the code path, and says that the GPU figures need a GPU.

Examples::

    python benchmarks/bench_encoder_throughput.py                     # GPU: 64,128,256,512
    python benchmarks/bench_encoder_throughput.py --compile --batch-sizes 256,512
    python benchmarks/bench_encoder_throughput.py --device cpu         # tiny CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

H200_BF16_PEAK_TFLOPS = 790.0  # dense bf16 tensor-core peak (the figure)
WINDOW_UM = 112.0
UM_PER_PX = 0.5


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, iters: int, warmup: int) -> float:
    """Median seconds of ``fn()`` over ``iters`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def build_vit(depth: int | None = None, seed: int = 0):
    """ViT-L/16 with UNI's arguments (random weights), eval mode, on the CPU."""
    import timm
    import torch

    from napari_trihrge.features._architectures import uni_args

    torch.manual_seed(seed)
    args = uni_args()
    if depth is not None:
        args["depth"] = depth
    return timm.create_model("vit_large_patch16_224", pretrained=False, **args).eval()


def analytic_gflop_per_window(model, input_px: int = 224) -> float:
    """Linear layers + patch embedding + attention scores of one window, in GFLOP."""
    d = int(model.embed_dim)
    depth = len(model.blocks)
    patch = int(model.patch_embed.patch_size[0])
    n = (input_px // patch) ** 2 + int(getattr(model, "num_prefix_tokens", 1))
    mlp = int(model.blocks[0].mlp.fc1.out_features)
    per_layer = 2 * n * (4 * d * d + 2 * d * mlp) + 4 * n * n * d
    embed = 2 * (n - 1) * (3 * patch * patch) * d
    return (depth * per_layer + embed) / 1e9


def counted_gflop_per_window(model, x) -> float | None:
    """FLOPs of one forward on batch ``x`` counted by FlopCounterMode, per window (GFLOP)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            model(x)
        return fc.get_total_flops() / len(x) / 1e9
    except Exception as err:  # noqa: BLE001 - depends on the torch build: reported, not fatal
        print(f"  (FlopCounterMode failed: {type(err).__name__}: {err})")
        return None


def fused_attention_report(model) -> str:
    from timm.layers import use_fused_attn

    flags = {bool(getattr(b.attn, "fused_attn", False)) for b in model.blocks}
    return (f"timm fused attention (F.scaled_dot_product_attention): "
            f"{'on' if flags == {True} else 'OFF' if flags == {False} else 'mixed'} "
            f"(timm.layers.use_fused_attn()={use_fused_attn()})")


def synthetic_image(size_px: int, seed: int = 0):
    """An H&E-sized RGB image at 0.5 um/px (8 px blocks of random colour): content does not
    change the cost, only the size does."""
    from napari_trihrge.io.image import TissueImage

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(size_px // 8, size_px // 8, 3), dtype=np.uint8)
    return TissueImage.from_array(np.kron(base, np.ones((8, 8, 1), dtype=np.uint8)), UM_PER_PX)


def window_centres(image, n: int, seed: int = 1) -> np.ndarray:
    """``n`` random (sub-pixel) window centres inside the image, row/col um."""
    h_um, w_um = image.shape_rc_um
    rng = np.random.default_rng(seed)
    return rng.uniform([WINDOW_UM, WINDOW_UM], [h_um - WINDOW_UM, w_um - WINDOW_UM], (n, 2))


def run(args: argparse.Namespace) -> dict:
    import torch

    from napari_trihrge.features._architectures import ARCHITECTURES
    from napari_trihrge.features.vit import TimmEncoder

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    tiny = not cuda
    batch_sizes = [int(b) for b in (args.batch_sizes or ("64,128,256,512" if cuda else "2")
                                    ).split(",")]
    iters = args.iters or (20 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    n_windows = args.windows or (8192 if cuda else 4)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""))
    if tiny:
        print("NOTE: no CUDA GPU: tiny float32 configuration (2 of the 24 blocks unless --depth, "
              "a few windows) to check the code path only. The GPU figures (windows/s, TFLOP/s, "
              "fraction of the H200 bf16 peak) need a GPU.")
    depth = args.depth if args.depth is not None else (None if cuda else 2)
    model = build_vit(depth)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: vit_large_patch16_224 with UNI's arguments, random weights, "
          f"{n_params / 1e6:.1f} M parameters, depth {len(model.blocks)}")
    print(fused_attention_report(model))
    enc = TimmEncoder.from_model(model, name="uni-random", weights_id="random",
                                 arch=ARCHITECTURES["uni"], device=device,
                                 batch_size=max(batch_sizes), num_workers=args.workers,
                                 precision="bf16" if cuda else "fp32")
    net = enc.model
    if args.compile:
        net = torch.compile(net)
        enc.model = net
    a_gflop = analytic_gflop_per_window(model)
    probe = torch.randn(min(2, batch_sizes[0]), 3, 224, 224, device=device)
    if cuda:
        probe = probe.contiguous(memory_format=torch.channels_last)
    with enc._autocast():
        c_gflop = counted_gflop_per_window(model, probe)
    use_gflop = c_gflop if c_gflop and c_gflop >= 0.9 * a_gflop else a_gflop
    print(f"GFLOP per 224 px window: counted {c_gflop if c_gflop is None else f'{c_gflop:.1f}'}"
          f" (FlopCounterMode), analytic {a_gflop:.1f}; using "
          f"{'counted' if use_gflop == c_gflop else 'analytic'}")
    peak = H200_BF16_PEAK_TFLOPS if cuda else None

    rows = []
    for bs in batch_sizes:
        x = torch.randn(bs, 3, 224, 224, device=device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)

        def model_only(x=x):
            with torch.inference_mode(), enc._autocast():
                net(x)

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t_model = _timed(model_only, device, iters, warmup)
        u8 = torch.randint(0, 256, (bs, 224, 224, 3), dtype=torch.uint8)
        if cuda:
            u8 = u8.pin_memory()
        t_fwd = _timed(lambda u8=u8: enc._forward(u8), device, iters, max(1, warmup // 2))
        gpu_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        row = {"batch": bs, "model_windows_s": bs / t_model, "forward_windows_s": bs / t_fwd,
               "tflops": bs / t_model * use_gflop / 1e3, "gpu_mem_gib": gpu_mem}
        row["fraction_of_peak"] = row["tflops"] / peak if peak else None
        rows.append(row)
        del x, u8

    # CPU window reading alone, then the real embed_windows path
    image = synthetic_image(args.image_px if args.image_px else (6144 if cuda else 1024))
    centres = window_centres(image, n_windows)
    readers_bs = max(batch_sizes)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(enc.num_workers) as pool:
        n_read = min(len(centres), max(readers_bs, 4 * readers_bs if cuda else readers_bs))
        t0 = time.perf_counter()
        for s in range(0, n_read, readers_bs):
            enc._read_batch(image, centres[s:s + readers_bs] - WINDOW_UM / 2, WINDOW_UM, pool)
        reader_ws = n_read / (time.perf_counter() - t0)
    enc.batch_size = readers_bs
    enc.embed_windows(image, centres[:readers_bs], WINDOW_UM)  # warm-up (and compile)
    _sync(device)
    t0 = time.perf_counter()
    emb = enc.embed_windows(image, centres, WINDOW_UM)
    _sync(device)
    e2e_ws = len(centres) / (time.perf_counter() - t0)
    assert emb.shape == (len(centres), enc.embed_dim) and np.isfinite(emb).all()

    print()
    print(f"{'batch':>6} {'model win/s':>12} {'TFLOP/s':>8} {'% peak':>7} "
          f"{'_forward win/s':>15} {'GPU GiB':>8}")
    for r in rows:
        frac = f"{100 * r['fraction_of_peak']:.1f}" if r["fraction_of_peak"] is not None else "n/a"
        print(f"{r['batch']:>6} {r['model_windows_s']:>12.1f} {r['tflops']:>8.2f} {frac:>7} "
              f"{r['forward_windows_s']:>15.1f} {r['gpu_mem_gib']:>8.1f}")
    print(f"\nCPU window reading ({enc.num_workers} threads, 224 px from 112 um, sub-pixel "
          f"centres): {reader_ws:.1f} windows/s")
    print(f"embed_windows end to end ({len(centres)} windows, batch {readers_bs}, image "
          f"{image.shape_px[0]} px): {e2e_ws:.1f} windows/s "
          f"({e2e_ws * use_gflop / 1e3:.2f} TFLOP/s)")
    print(f"peak host RSS {_peak_rss_mb():.0f} MiB")
    if tiny:
        print("\nGPU figures NOT measured here (no CUDA device).")
    result = {"device": device, "compile": bool(args.compile), "gflop_counted": c_gflop,
              "gflop_analytic": a_gflop, "gflop_used": use_gflop, "rows": rows,
              "reader_windows_s": reader_ws, "embed_windows_s": e2e_ws,
              "embed_windows_n": len(centres), "reader_threads": enc.num_workers,
              "peak_rss_mb": _peak_rss_mb(), "tiny_cpu_config": tiny}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (GPU default "
                   "64,128,256,512; CPU 2)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per batch size")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--windows", type=int, default=None, help="windows for the embed_windows "
                   "run (GPU default 8192; CPU 4)")
    p.add_argument("--image-px", type=int, default=None, help="side of the synthetic image in "
                   "pixels at 0.5 um/px")
    p.add_argument("--workers", type=int, default=None, help="CPU reader threads (default: "
                   "min(8, cores))")
    p.add_argument("--depth", type=int, default=None, help="override the number of blocks "
                   "(default 24 on CUDA, 2 on the CPU; FLOPs are counted for the model run)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
