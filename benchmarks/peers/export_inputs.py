"""Export the inputs our recovery uses, so that peer methods run on exactly the same data.

Runs in the project's environment. For every section it writes, under
``benchmarks/peers/.work/<section>/``:

* ``image.npy``: the H&E the engine reads (``io.get_image``), resampled to ``--image-um-per-px``
  (TESLA works in image pixels; 1 um/px makes its 25 um superpixel 25 px);
* ``features.npy``: our default-encoder image bags ``(N, S, D)`` at the recovery windows (the
  features the reference TriHRGE code gets instead of UNI);
* ``inputs_seed<seed>.npz``: the 1000 HVGs and their log-normalised values for every spot
  (``pp.prepare_expression``), the hidden/visible split (``tl._shared._holdout_split``, 50 %),
  spot centres (row/col um and x/y in ``image.npy`` pixels), the array lattice indices and the
  sample's geometry.

    python benchmarks/peers/export_inputs.py --sections dlpfc_151673,her2st/C3 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _common import SHARED_DATA, limit_threads, shared_samples  # noqa: E402

WORK = HERE / ".work"
HOLDOUT_FRACTION = 0.5


def section_dir(name: str) -> Path:
    return WORK / name.replace("/", "_")


def lattice_indices(adata) -> np.ndarray:
    """Integer array lattice (row, col) per spot: Visium array_row/array_col, ST array_y/array_x."""
    obs = adata.obs
    if {"array_row", "array_col"} <= set(obs.columns):
        return obs[["array_row", "array_col"]].to_numpy(dtype=np.int64)
    if {"array_x", "array_y"} <= set(obs.columns):
        return obs[["array_y", "array_x"]].to_numpy(dtype=np.int64)
    raise SystemExit("the sample has no array lattice columns (array_row/array_col or array_x/array_y)")


def export_section(name: str, path: Path, seeds: list[int], image_um_per_px: float,
                   cache_dir: Path) -> None:
    from napari_trihrge import io
    from napari_trihrge.pp import prepare_expression
    from napari_trihrge.progress import ensure_progress
    from napari_trihrge.tl import RunConfig, sample_geometry
    from napari_trihrge.tl._shared import _encoder_and_image, _features, _holdout_split

    out = section_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    adata = io.read(path)
    cfg = RunConfig(cache_dir=str(cache_dir))
    expr = prepare_expression(adata, n_top_genes=cfg.n_top_genes, extra_genes=cfg.extra_genes)
    rc_um, um_per_px_full, spot_diameter_um = sample_geometry(expr)
    y = np.asarray(expr.X, dtype=np.float32)
    image, encoder = _encoder_and_image(adata, cfg)
    if not (out / "image.npy").exists():
        arr, exact_um_per_px = image.at_resolution(image_um_per_px, return_um_per_px=True)
        np.save(out / "image.npy", arr)
        (out / "image.json").write_text(json.dumps(
            {"um_per_px": exact_um_per_px, "source": image.source if hasattr(image, "source")
             else str(image), "native_um_per_px": image.um_per_px}))
    meta = json.loads((out / "image.json").read_text())
    if not (out / "features.npy").exists():
        feats = _features(image, encoder, rc_um, cfg.windows_um, cfg, ensure_progress(None))
        np.save(out / "features.npy", feats.astype(np.float32))
    lattice = lattice_indices(expr)
    platform = str(expr.uns["trihrge"].get("platform", "visium"))
    for seed in seeds:
        hidden, visible = _holdout_split(expr.n_obs, HOLDOUT_FRACTION, seed)
        np.savez_compressed(
            out / f"inputs_seed{seed}.npz", X=y, genes=np.asarray(expr.var_names, dtype=str),
            barcodes=np.asarray(expr.obs_names, dtype=str), hidden=hidden, visible=visible,
            rc_um=rc_um, rc_px_image=rc_um / meta["um_per_px"], lattice_rc=lattice,
            image_um_per_px=meta["um_per_px"], spot_diameter_um=spot_diameter_um,
            platform=platform, seed=seed, holdout_fraction=HOLDOUT_FRACTION,
            windows_um=np.asarray(cfg.windows_um))
        print(f"{name} seed {seed}: {len(hidden)} hidden, {len(visible)} visible, "
              f"{y.shape[1]} genes, image {meta['um_per_px']:.3f} um/px", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED_DATA))
    ap.add_argument("--sections", default="dlpfc_151673,her2st/C2,her2st/C3,her2st/C4,her2st/C5")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--image-um-per-px", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    limit_threads(args.threads)
    samples = shared_samples(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.sections.split(","):
        if name not in samples:
            raise SystemExit(f"{name} not found under {args.data}")
        export_section(name, samples[name], seeds, args.image_um_per_px, WORK / "feature_cache")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
