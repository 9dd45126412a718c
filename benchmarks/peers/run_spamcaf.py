"""Run the TriHRGE reference code (github wenwenmin/SpaMCAF) on one exported section/seed.

Runs in its own environment, from a checkout outside this repository (none of its code is copied
here; this script imports it):

    benchmarks/peers/.envs/spamcaf/bin/python benchmarks/peers/run_spamcaf.py her2st_C3 \
        --seed 1 --epochs 1000 --src benchmarks/peers/.envs/spamcaf-src

Its ``train.train(section_id, experiment='recovery', data_type='10x', ...)`` is called unchanged
except for what this script swaps in its module namespace:

* feature loading: ``get_sectionData`` / ``get_trainData`` return our inputs (the 1000 HVGs, their
  log-normalised values, our hidden/visible split, the spots' lattice indices) and our
  default-encoder features at the two windows (112 um and 336 um, its 224 px and 672 px at
  0.5 um/px) in place of UNI features. Its network reads 1024-wide features (the ABMIL input width
  is fixed at 1024), so ours are zero-padded to 1024 columns; ``get_image_feature`` (which logs in
  to Hugging Face and downloads UNI at import) is replaced by a module that refuses to be called.
* ``get_setting``: its own values (seed 1234, batch 1 = 50 spots, lr 1e-3, ...) with the epoch
  count set by ``--epochs`` (its default is 1000).
* with ``--snapshots 100,250,500``: its epoch progress bar (``train.tqdm``) is wrapped so that
  after those epochs the model being trained predicts every spot, as its own test loop does
  (its dataset class, batches of 50 spots, ``model.eval()`` under ``no_grad``), before training
  goes on. The torch and numpy random states are saved before and restored after each snapshot,
  so that the training run stays the same as without snapshots. A snapshot is epoch N *of the
  ``--epochs`` schedule* (its cosine learning rate depends on the total), not an N-epoch run.
  Each one is written as ``spamcaf_e<N>_seed<seed>.npz`` / ``.json`` as soon as it is made, so a
  run stopped early still leaves its snapshots.

It predicts every spot, training spots included (its own test scores all of them); the hidden-spot
rows are kept for scoring. Writes ``spamcaf_seed<seed>.npz`` / ``.json`` next to the inputs.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
FEATURE_WIDTH = 1024  # fixed in the reference model (ABMIL input_dim)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("section", help="exported section folder name under .work/, e.g. her2st_C3")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--src", required=True, help="checkout folder holding SpaMCAF/train.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--snapshots", default="", help="comma-separated epochs to score on the way")
    args = ap.parse_args(argv)
    snapshots = sorted({int(e) for e in args.snapshots.split(",") if e.strip()})
    if any(e < 1 or e >= args.epochs for e in snapshots):
        raise SystemExit(f"snapshot epochs must lie between 1 and {args.epochs - 1}")

    import anndata
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    d = WORK / args.section
    inp = np.load(d / f"inputs_seed{args.seed}.npz")
    feats = np.load(d / "features.npy")
    if feats.shape[2] > FEATURE_WIDTH:
        raise SystemExit(f"features are {feats.shape[2]} wide; the reference model takes {FEATURE_WIDTH}")
    if feats.shape[1] != 2:
        raise SystemExit(f"expected 2 windows, got {feats.shape[1]}")
    padded = np.zeros((feats.shape[0], 2, FEATURE_WIDTH), dtype=np.float32)
    padded[:, :, :feats.shape[2]] = feats
    x = np.asarray(inp["X"], dtype=np.float32)
    visible, hidden = inp["visible"], inp["hidden"]
    genes = np.asarray([str(g) for g in inp["genes"]])
    barcodes = [str(b) for b in inp["barcodes"]]
    lattice = inp["lattice_rc"]
    if x.shape[1] != 1000:
        raise SystemExit(f"the reference model predicts 1000 genes; the inputs have {x.shape[1]}")

    src = Path(args.src).resolve() / "SpaMCAF"
    if not (src / "train.py").is_file():
        raise SystemExit(f"{src}/train.py not found: pass the checkout folder with --src")
    stand_in = types.ModuleType("get_image_feature")

    def _no_uni(*_a, **_k):
        raise RuntimeError("UNI feature loading is swapped out in this benchmark")

    stand_in.UNI_features = _no_uni
    sys.modules["get_image_feature"] = stand_in
    sys.path.insert(0, str(src))
    import train as reference  # the reference code's train.py

    adata = anndata.AnnData(X=x, obs=pd.DataFrame(index=barcodes),
                            var=pd.DataFrame(index=genes))
    # its convention: obsm['coord'] = (array_col, array_row)
    coord = pd.DataFrame(np.ascontiguousarray(lattice[:, ::-1]), index=barcodes, columns=["x", "y"])
    spatial = pd.DataFrame(np.ascontiguousarray(inp["rc_px_image"][:, ::-1]), index=barcodes)

    def get_section_data(section_id):
        return adata, None

    def get_train_data(adata_, image_path, experiment, data_type, path1, coord_sf=77):
        assert experiment == "recovery"
        sample = {"sample_features_224": padded[visible, 0], "sample_features_672": padded[visible, 1]}
        fill = {"fill_features_224": padded[:, 0], "fill_features_672": padded[:, 1]}
        return (pd.DataFrame(x[visible].T), pd.DataFrame(x.T), adata[visible].copy(), sample, fill,
                coord.iloc[visible], coord, spatial.iloc[visible], spatial, genes)

    setting = list(reference.get_setting())
    epochs_default = setting[-1]
    setting[-1] = args.epochs
    reference.get_setting = lambda: tuple(setting)
    reference.get_sectionData = get_section_data
    reference.get_trainData = get_train_data

    out_dir = d / f"spamcaf_seed{args.seed}"
    out_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    if snapshots:
        _add_snapshots(reference, snapshots, args, d, hidden, visible, x, coord, padded, t0)
    reference.train(args.section, experiment="recovery", data_type="10x",
                    save_model_path=str(out_dir), path1=str(out_dir / "file_tmp"))
    wall_s = time.perf_counter() - t0
    pred_all = np.loadtxt(out_dir / "fill_data.txt", dtype=np.float32)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = usage.ru_maxrss / 1024
    np.savez_compressed(d / f"spamcaf_seed{args.seed}.npz", pred_hidden=pred_all[hidden],
                        pred_visible=pred_all[visible], hidden=hidden)
    info = {"method": "SpaMCAF (TriHRGE reference code)", "seed": args.seed,
            "epochs": args.epochs, "epochs_default": epochs_default,
            "seconds_per_epoch": wall_s / args.epochs, "features": "stain-texture (ours), "
            f"{feats.shape[2]} wide, zero-padded to {FEATURE_WIDTH}", "n_visible": int(len(visible)),
            "n_hidden": int(len(hidden)), "wall_s": wall_s, "peak_rss_mb": peak_mb,
            "cpu_s_process": usage.ru_utime + usage.ru_stime,
            "threads": args.threads}
    (d / f"spamcaf_seed{args.seed}.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info), flush=True)
    return 0


def _add_snapshots(reference, snapshots, args, d, hidden, visible, x, coord, padded, t0):
    """Wrap the reference code's model class and epoch bar so that the model predicts every spot
    after the given epochs (see the module docstring)."""
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader

    held = {}
    model_class = reference.SpaMCAF

    def make_model(*a, **k):
        held["model"] = model_class(*a, **k)
        return held["model"]

    reference.SpaMCAF = make_model
    every_spot = reference.MyDatasetTrans(
        train=False, normed_data=pd.DataFrame(x.T), coor_df=coord,
        image={"fill_features_224": padded[:, 0], "fill_features_672": padded[:, 1]})

    def predict_every_spot(model) -> np.ndarray:
        torch_state, np_state = torch.get_rng_state(), np.random.get_state()
        model.eval()
        rows = []
        with torch.no_grad():
            for _exp, pos, image in DataLoader(every_spot, batch_size=1, shuffle=False):
                rows.append(model(image, pos)[1].reshape(-1, x.shape[1]).numpy())
        model.train()
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        return np.concatenate(rows)

    bar_class = reference.tqdm

    class EpochBar(bar_class):
        def __iter__(self):
            for j in super().__iter__():
                if self.desc.startswith("Epochs") and j in snapshots:
                    wall_s = time.perf_counter() - t0
                    pred_all = predict_every_spot(held["model"])
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    np.savez_compressed(d / f"spamcaf_e{j}_seed{args.seed}.npz",
                                        pred_hidden=pred_all[hidden], hidden=hidden)
                    (d / f"spamcaf_e{j}_seed{args.seed}.json").write_text(json.dumps({
                        "method": "SpaMCAF (TriHRGE reference code), snapshot", "seed": args.seed,
                        "epochs": j, "epochs_schedule": args.epochs, "wall_s": wall_s,
                        "seconds_per_epoch": wall_s / j, "peak_rss_mb": usage.ru_maxrss / 1024,
                        "cpu_s_process": usage.ru_utime + usage.ru_stime,
                        "train_loss_postfix": str(self.postfix), "threads": args.threads},
                        indent=1))
                    print(f"snapshot after epoch {j}: {wall_s:.0f} s", flush=True)
                yield j

    reference.tqdm = EpochBar


if __name__ == "__main__":
    sys.exit(main())
