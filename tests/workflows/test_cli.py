"""The ``trihrge`` command line: help texts with units, small end-to-end runs, input errors as
exit code 2 with a one-line reason, the encoder list."""

from __future__ import annotations

import argparse
import inspect
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.metrics import TRUST_COLUMNS, spot_scores
from napari_trihrge.workflows import _cli_options as cli_options
from napari_trihrge.workflows import cli


@pytest.fixture(autouse=True)
def _user_cache_in_tmp(tmp_path, monkeypatch):
    """The default feature cache is the user cache folder: keep the tests' out of $HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_commands_and_units(capsys):
    text = _help(capsys)
    for cmd in ("demo", "recovery", "enhance", "cohort", "encoders"):
        assert cmd in text
    flat = " ".join(text.split())
    assert "HF_TOKEN" in flat and "never accepted on the command line" in flat


def _modules_loaded_by(*argv: str) -> dict[str, bool]:
    """Run ``trihrge argv`` in a fresh interpreter; which heavy modules it imported."""
    import subprocess
    import sys

    heavy = ("torch", "anndata", "napari_trihrge.tl")
    code = ("import sys\nfrom napari_trihrge.workflows.cli import main\n"
            f"try:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass\n"
            f"print(*[m in sys.modules for m in {heavy!r}], file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return dict(zip(heavy, (w == "True" for w in done.stderr.split()[-3:]), strict=True))


def test_top_level_help_and_a_mistyped_subcommand_import_no_engine():
    for argv in (["--help"], ["recovr", "x"], []):
        assert not any(_modules_loaded_by(*argv).values()), argv


def test_subcommand_help_and_argument_errors_do_not_import_torch():
    for argv in (["recovery", "--help"], ["enhance", "x", "--factor", "3"]):
        loaded = _modules_loaded_by(*argv)
        assert loaded["napari_trihrge.tl"] and not loaded["torch"], argv  # defaults from tl


@pytest.mark.parametrize("command", ["demo", "recovery", "enhance", "cohort"])
def test_subcommand_help_mentions_units(capsys, command):
    text = _help(capsys, command)
    assert " um" in text or "micrometre" in text, f"{command} --help has no unit"


def test_run_help_gives_window_and_pixel_units(capsys):
    text = _help(capsys, "enhance")
    assert "--windows-um" in text and "--stride-um" in text and "--um-per-px" in text
    assert "micrometres" in text


def test_encoders_lists_the_registered_encoders(capsys):
    assert cli.main(["encoders"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert {"stain-texture", "uni", "uni2-h"} <= set(names)


def _one_line_error(capsys, argv) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("trihrge: error:") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_missing_input_is_exit_2_with_one_line(capsys, tmp_path):
    err = _one_line_error(capsys, ["enhance", str(tmp_path / "nope.h5ad"), "--out",
                                   str(tmp_path / "o"), "--quiet"])
    assert "nope.h5ad" in err


def test_corrupt_h5ad_is_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"not hdf5")
    err = _one_line_error(capsys, ["recovery", str(bad), "--out", str(tmp_path / "o"),
                                   "--quiet"])
    assert "bad.h5ad" in err


def test_bad_option_value_is_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["enhance", str(tmp_path), "--factor", "3"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["enhance", "validate-hd", "cohort", "predict"])
def test_factor_choices_are_the_engine_rule(command):
    """--factor offers exactly what the engine accepts (16x included), on every subcommand."""
    from napari_trihrge.geometry import DEFAULT_DENSITY_FACTOR, DENSITY_FACTORS

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    factor = next(a for a in sub.choices[command]._actions if a.dest == "factor")
    assert list(factor.choices) == list(DENSITY_FACTORS)
    assert factor.default == DEFAULT_DENSITY_FACTOR
    args = ["model"] if command == "predict" else []
    assert parser.parse_args([command, *args, "x", "--factor", "16"]).factor == 16


@pytest.fixture(scope="module")
def sample_h5ad(tmp_path_factory):
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io.outputs import write_h5ad

    path = tmp_path_factory.mktemp("cli") / "tiny.h5ad"
    # 80 genes: enough (>= 30) detected in 3 spots or more with the sparse genes
    write_h5ad(synthetic_sample(seed=4, size_um=(900.0, 900.0), n_genes=80), path)
    return path


def test_enhance_end_to_end(capsys, sample_h5ad, tmp_path):
    out = tmp_path / "enh"
    code = cli.main(["enhance", str(sample_h5ad), "--genes", "30", "--max-epochs", "3",
                     "--factor", "2", "--device", "cpu", "--out", str(out), "--quiet",
                     "--cache-dir", str(tmp_path / "cache")])
    text = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_genes"] == 30 and summary["device"] == "cpu"
    assert summary["training"][0]["epochs_run"] <= 3
    assert summary["enhance"]["factor"] == 2
    assert (out / "enhanced.h5ad").exists() and (out / "overview.png").exists()
    assert "Outputs in" in text and "peak memory" in text
    # per-gene trust from the internal held-out split, in every output
    trust = summary["trust"]
    assert trust["n_hidden"] + trust["n_visible"] == summary["n_spots"]
    assert "genes beat kNN interpolation" in text
    enhanced = ad.read_h5ad(out / "enhanced.h5ad")
    table = pd.read_csv(out / summary["outputs"]["per_gene"], index_col=0)
    for col in TRUST_COLUMNS:
        assert col in enhanced.var and col in table, col
    assert enhanced.var["beats_interpolation"].dtype == bool
    assert enhanced.var["beats_interpolation"].sum() == trust["n_genes_beating_interpolation"]
    assert enhanced.uns["trihrge"]["trust"]["n_hidden"] == trust["n_hidden"]
    # the same output folder again without --overwrite: refused with a one-line reason
    err = _one_line_error(capsys, ["enhance", str(sample_h5ad), "--genes", "30",
                                   "--max-epochs", "3", "--out", str(out), "--quiet"])
    assert "--overwrite" in err
    assert (out / "run_complete.json").exists() and not (out / "maps.ome.zarr").exists()


def test_overwrite_replaces_a_run_with_maps(capsys, sample_h5ad, tmp_path):
    out = tmp_path / "enh"
    base = ["enhance", str(sample_h5ad), "--genes", "20", "--max-epochs", "2", "--factor", "2",
            "--device", "cpu", "--out", str(out), "--quiet"]
    assert cli.main([*base, "--stride-um", "40"]) == 0
    # the default: the factorised map store alone
    assert (out / "maps.store.zarr").exists() and not (out / "maps.ome.zarr").exists()
    assert cli.main([*base, "--stride-um", "40", "--overwrite", "--materialise-maps"]) == 0
    assert (out / "maps.ome.zarr").exists() and (out / "maps.store.zarr").exists()
    assert cli.main([*base, "--overwrite"]) == 0  # no stale maps from the earlier run
    assert not (out / "maps.ome.zarr").exists() and not (out / "maps.store.zarr").exists()
    assert (out / "run_complete.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".enh")) == []
    capsys.readouterr()


def test_error_after_reading_leaves_no_output_folder(capsys, sample_h5ad, tmp_path):
    from napari_trihrge import io
    from napari_trihrge.tl import RunConfig
    from napari_trihrge.workflows.runs import run_enhance

    err = _one_line_error(capsys, ["enhance", str(sample_h5ad), "--stride-um", "5000",
                                   "--out", str(tmp_path / "o"), "--quiet"])
    assert "larger than half the image" in err
    with pytest.raises(TrihrgeInputError, match="larger than half the image"):
        run_enhance(io.read(sample_h5ad), tmp_path / "api", stride_um=5000.0,
                    config=RunConfig(n_top_genes=10, device="cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_recovery_end_to_end(capsys, sample_h5ad, tmp_path):
    out = tmp_path / "rec"
    code = cli.main(["recovery", str(sample_h5ad), "--genes", "30", "--max-epochs", "3",
                     "--holdout", "0.5", "--annotation", "domain", "--device", "cpu",
                     "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    rec = summary["recovery"]
    assert rec["heldout_fraction"] == 0.5 and rec["n_hidden"] + rec["n_visible"] == \
        summary["n_spots"]
    assert "Recovery (50% hidden" in text and "best kNN interpolation" in text
    assert "predicted as a constant" in text
    assert "noise ceiling" in text and "of it reached" in text
    assert 0 < rec["pcc_mean"] / rec["noise_ceiling_pcc_mean"] == \
        pytest.approx(rec["fraction_of_ceiling"])
    assert "noise_ceiling" in pd.read_csv(out / "recovery_genes.csv").columns
    assert rec["baseline_knn_pcc_mean"] == max(rec["baseline_knn6_pcc_mean"],
                                               rec["baseline_knn12_pcc_mean"])
    assert summary["trust"]["n_genes_beating_interpolation"] == \
        rec["n_genes_beating_interpolation"]
    predictions = ad.read_h5ad(out / "recovery.h5ad")
    # the summary's scores are the fair score of the predictions written next to it
    again, _ = spot_scores(predictions.X, predictions.layers["measured"],
                           list(predictions.var_names), {"knn": predictions.layers["knn"]})
    for key in ("pcc_mean", "pcc_top100", "n_genes_constant_prediction", "baseline_knn_pcc_mean",
                "baseline_knn_pcc_top100"):
        assert rec[key] == pytest.approx(again[key], abs=1e-4), key
    table = pd.read_csv(out / "recovery_genes.csv", index_col=0)
    for col in TRUST_COLUMNS:
        assert col in predictions.var and col in table, col


def test_enhance_no_trust(capsys, sample_h5ad, tmp_path):
    out = tmp_path / "enh"
    assert cli.main(["enhance", str(sample_h5ad), "--genes", "30", "--max-epochs", "2",
                     "--factor", "2", "--device", "cpu", "--out", str(out), "--quiet",
                     "--no-trust"]) == 0
    assert "not measured (--no-trust)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trust"] is None and "per_gene" not in summary["outputs"]
    assert "beats_interpolation" not in ad.read_h5ad(out / "enhanced.h5ad").var


def test_cohort_with_finished_samples_needs_no_cluster(capsys, sample_h5ad, tmp_path):
    out = tmp_path / "cohort"
    (out / "tiny").mkdir(parents=True)
    (out / "tiny" / "summary.json").write_text("{}")
    (out / "tiny" / "run_complete.json").write_text("{}")
    assert cli.main(["cohort", str(sample_h5ad), "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert (out / "cohort_report.csv").exists()


@pytest.mark.parametrize("option", [["--workers", "0"], ["--workers", "-1"],
                                    ["--scheduler", "not an address"]])
def test_cohort_cluster_options_are_refused_at_once(capsys, sample_h5ad, tmp_path, option):
    err = _one_line_error(capsys, ["cohort", str(sample_h5ad), "--out", str(tmp_path / "c"),
                                   *option])
    assert ("--workers must be 1 or more" in err) or ("not a dask scheduler address" in err)
    assert not (tmp_path / "c").exists()


def test_local_checkpoint_with_encoder_arch(capsys, sample_h5ad, tmp_path):
    """A hand-downloaded checkpoint of a timm architecture runs through the whole CLI."""
    import timm
    import torch

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                              dynamic_img_size=True)
    ckpt = tmp_path / "pytorch_model.bin"
    torch.save(model.state_dict(), ckpt)
    argv = ["recovery", str(sample_h5ad), "--encoder", str(ckpt), "--genes", "20",
            "--max-epochs", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "rec")]
    assert cli.main([*argv, "--encoder-arch", "vit_tiny_patch16_224"]) == 0
    summary = json.loads((tmp_path / "rec" / "summary.json").read_text())
    assert summary["encoder"] == str(ckpt)
    assert summary["config"]["encoder_architecture"] == "vit_tiny_patch16_224"
    capsys.readouterr()


def test_input_options_reach_every_reader(tmp_path):
    """--image, --platform and --spot-diameter-px on Space Ranger folders, --image on her2st
    folders and .h5ad files: read without a traceback (the README promises them)."""
    import tifffile

    from napari_trihrge.io.outputs import write_h5ad
    from sample_folders import FULL_HW, make_st_section, make_visium_folder

    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, np.random.default_rng(0).integers(60, 250, (*FULL_HW, 3), np.uint8))
    folder = make_visium_folder(tmp_path / "vis")
    parser = cli.build_parser()

    def read(*argv):
        return cli_options.read_sample(parser.parse_args(["enhance", *map(str, argv)]))

    adata = read(folder, "--image", slide, "--platform", "visium", "--spot-diameter-px", "100")
    info = adata.uns["trihrge"]
    assert info["fullres_image_path"] == str(slide.resolve())
    assert info["um_per_px_source"] == "lattice"
    assert info["um_per_px_estimates"]["spot_diameter"] == pytest.approx(0.55)
    from napari_trihrge import io

    assert io.get_image(adata).shape_px == FULL_HW
    h5ad = tmp_path / "vis.h5ad"
    del adata.uns["trihrge"]["fullres_image_path"]
    write_h5ad(adata, h5ad)
    assert read(h5ad, "--image", slide).uns["trihrge"]["fullres_image_path"] == \
        str(slide.resolve())
    section = make_st_section(tmp_path / "S1")
    other = tmp_path / "other.jpg"
    (section / "S1_HE.jpg").rename(other)
    with pytest.warns(UserWarning, match="not selected"):
        st = read(section, "--image", other)
    assert st.uns["trihrge"]["fullres_image_path"] == str(other.resolve())
    with pytest.raises(TrihrgeInputError, match="platform 'st'"):
        read(folder, "--platform", "st")
    with pytest.raises(TrihrgeInputError, match="--positions cannot be used"):
        read(folder, "--positions", slide)


@pytest.mark.parametrize("option,value,reason", [
    ("--windows-um", "abc", "expected a number"),
    ("--windows-um", "112,-3", "positive"),
    ("--genes", "0", "must be >= 1"),
    ("--ensemble", "0", "must be >= 1"),
    ("--max-epochs", "0", "must be >= 1"),
    ("--stride-um", "0", "positive"),
    ("--um-per-px", "nan", "positive"),
])
def test_bad_numbers_are_refused_by_the_parser(capsys, tmp_path, option, value, reason):
    with pytest.raises(SystemExit) as exc:
        cli.main(["enhance", str(tmp_path), option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and reason in err and "Traceback" not in err


@pytest.mark.parametrize("command,option,value,reason", [
    (["predict", "model"], "--windows-um", "112,-3", "positive"),
    (["predict", "model"], "--stride-um", "-8", "positive"),
    (["train"], "--trust-fraction", "1.5", "between 0 and 1"),
    (["train"], "--trust-fraction", "-0.1", "between 0 and 1"),
    (["validate-hd"], "--um-per-px", "0", "positive"),
])
def test_every_subcommand_uses_the_shared_validators(capsys, tmp_path, command, option, value,
                                                     reason):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, str(tmp_path), option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and reason in err and "Traceback" not in err


def test_run_options_default_to_the_api():
    """The CLI repeats no default: run options come from RunConfig, the others from the task
    functions' keywords."""
    from napari_trihrge import tl

    run = tl.RunConfig()
    parser = cli.build_parser()
    args = parser.parse_args(["enhance", "x"])
    assert (args.encoder, args.genes, args.windows_um, args.ensemble, args.seed, args.device) == (
        run.encoder, run.n_top_genes, tuple(run.windows_um), run.ensemble, run.seed, run.device)
    assert parser.parse_args(["recovery", "x"]).holdout == \
        inspect.signature(tl.recovery).parameters["holdout_fraction"].default
    assert parser.parse_args(["train", "x"]).trust_fraction == \
        inspect.signature(tl.train).parameters["trust_fraction"].default
    assert parser.parse_args(["train", "x", "--trust-fraction", "0"]).trust_fraction == 0.0
    cfg = cli_options.run_config(args)
    assert (cfg.encoder, cfg.n_top_genes, cfg.windows_um) == (run.encoder, run.n_top_genes,
                                                              run.windows_um)
    assert cfg.map_method == run.map_method
    for command in ("enhance", "validate-coarse"):
        chosen = parser.parse_args([command, "x", "--map-method", "residual"])
        assert cli_options.run_config(chosen).map_method == "residual"


def test_a_subcommand_is_one_row_of_the_table(monkeypatch, capsys):
    """Adding a subcommand is local: a row with its options and its run function."""
    seen = {}

    def add(p):
        p.add_argument("--answer", type=int, default=42)

    def run(args, progress):
        seen["answer"] = args.answer
        return 0

    row = cli.Subcommand("hello", "say hello", add, run)
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, row))
    assert cli.main(["hello", "--answer", "7"]) == 0
    assert seen == {"answer": 7}
    assert "hello" in _help(capsys)


def test_cache_dir_that_is_a_file_is_refused_before_reading(capsys, tmp_path):
    blocker = tmp_path / "cache.txt"
    blocker.write_text("x")
    err = _one_line_error(capsys, ["enhance", str(tmp_path / "missing.h5ad"), "--cache-dir",
                                   str(blocker), "--quiet"])
    assert "cache.txt is a file" in err  # before the missing input is even looked at


def test_output_inside_a_read_only_folder(capsys, sample_h5ad, tmp_path, monkeypatch):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root may write anywhere: let the OS say no here
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(
                str(locked)) else real(p, mode))
        err = _one_line_error(capsys, ["enhance", str(sample_h5ad), "--out",
                                       str(locked / "run"), "--quiet"])
        assert "cannot be written" in err
    finally:
        locked.chmod(0o700)


def test_stride_that_would_not_fit_is_refused_up_front(capsys, sample_h5ad, tmp_path):
    err = _one_line_error(capsys, ["enhance", str(sample_h5ad), "--stride-um", "0.001",
                                   "--out", str(tmp_path / "o"), "--quiet"])
    assert "finer than the image's pixel" in err
    assert not (tmp_path / "o").exists()


def test_map_size_refusal_names_the_memory_needed(sample_h5ad, monkeypatch):
    from napari_trihrge import io
    from napari_trihrge import tl as tasks

    adata = io.read(sample_h5ad)
    monkeypatch.setattr(tasks._maps, "_available_memory_bytes", lambda: 1e6)
    with pytest.raises(TrihrgeInputError, match=r"would need [\d.]+ MiB of memory"):
        tasks.check_map_size(adata, 2.0, n_genes=30)
    tasks.check_map_size(adata, 400.0, n_genes=30)  # a coarse map fits


def test_map_stride_larger_than_the_tissue_is_refused_before_training(sample_h5ad):
    from napari_trihrge import io
    from napari_trihrge import tl as tasks

    adata = io.read(sample_h5ad)
    with pytest.raises(TrihrgeInputError, match="larger than half the image"):
        tasks.enhance(adata, stride_um=5000.0, config=tasks.RunConfig(
            n_top_genes=10, device="cpu", train={"max_epochs": 1}))


@pytest.mark.parametrize("field,value,reason", [
    ("ensemble", 0, "ensemble"), ("n_top_genes", 0, "number of genes"),
    ("windows_um", (112.0, float("nan")), "window sizes"),
    ("train", {"max_epochs": 0}, "max_epochs"),
])
def test_api_refuses_impossible_settings_before_any_work(synthetic, field, value, reason):
    from napari_trihrge import tl as tasks

    cfg = tasks.RunConfig(**{field: value})
    for run in (tasks.recovery, tasks.enhance):
        with pytest.raises(TrihrgeInputError, match=reason):
            run(synthetic, config=cfg)


def test_train_and_predict_help_mention_units(capsys):
    assert "--image-only" in _help(capsys, "train")
    text = _help(capsys, "predict")
    assert "--um-per-px" in text and "--stride-um" in text and "micrometres" in text


def test_train_then_predict_an_image_alone(capsys, sample_h5ad, tmp_path):
    from PIL import Image

    from napari_trihrge import io

    model = tmp_path / "model"
    code = cli.main(["train", str(sample_h5ad), "--image-only", "--genes", "20",
                     "--max-epochs", "3", "--device", "cpu", "--out", str(model), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (model / "model.json").is_file() and (model / "genes.csv").is_file()
    assert "held-out spots" in capsys.readouterr().out
    png = tmp_path / "slide.png"
    Image.fromarray(np.asarray(io.get_image(io.read(sample_h5ad)).array)).save(png)
    err = _one_line_error(capsys, ["predict", str(model), str(png), "--out",
                                   str(tmp_path / "o1"), "--quiet"])
    assert "pixel size" in err and "--um-per-px" in err
    out = tmp_path / "o2"
    code = cli.main(["predict", str(model), str(png), "--um-per-px", "1", "--stride-um", "48",
                     "--factor", "2", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    for name in ("enhanced.h5ad", "maps.store.zarr", "overview.png", "summary.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predict"]["target"] == "image" and summary["predict"]["map_locations"] > 0
    # the same slide as a JPEG on pinkish glass: the map stays on the tissue
    rgb = np.asarray(Image.open(png).convert("RGB")).copy()
    glass = rgb.astype(int).sum(axis=2) > 3 * 225
    rgb[glass] = (234, 219, 235)
    jpg = tmp_path / "slide_pink.jpg"
    Image.fromarray(rgb).save(jpg, quality=90)
    code = cli.main(["predict", str(model), str(jpg), "--um-per-px", "1", "--stride-um", "48",
                     "--factor", "2", "--out", str(tmp_path / "o_jpg"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    on_pink = json.loads((tmp_path / "o_jpg" / "summary.json").read_text())["predict"]
    assert abs(on_pink["map_locations"] - summary["predict"]["map_locations"]) <= \
        0.1 * summary["predict"]["map_locations"]
    # a sample with spots: scored at its measured spots
    code = cli.main(["predict", str(model), str(sample_h5ad), "--factor", "2", "--out",
                     str(tmp_path / "o3"), "--quiet"])
    assert code == 0
    assert "measured spots" in capsys.readouterr().out
    err = _one_line_error(capsys, ["predict", str(model), str(sample_h5ad), "--encoder", "uni",
                                   "--out", str(tmp_path / "o4"), "--quiet"])
    assert "encoder mismatch" in err and "stain-texture" in err
    # an output is never an input: not the model folder, not around the sample (--overwrite or not)
    before = {f.name: f.read_bytes() for f in model.iterdir() if f.is_file()}
    err = _one_line_error(capsys, ["predict", str(model), str(sample_h5ad), "--out", str(model),
                                   "--overwrite", "--quiet"])
    assert "is the input" in err and str(model) in err
    err = _one_line_error(capsys, ["predict", str(model), str(sample_h5ad), "--out",
                                   str(sample_h5ad.parent), "--overwrite", "--quiet"])
    assert "holds the input" in err
    assert {f.name: f.read_bytes() for f in model.iterdir() if f.is_file()} == before


def test_missing_annotation_is_refused_before_training(capsys, sample_h5ad, tmp_path):
    err = _one_line_error(capsys, ["recovery", str(sample_h5ad), "--annotation",
                                   str(tmp_path / "labels.tsv"), "--out", str(tmp_path / "o"),
                                   "--quiet"])
    assert "labels.tsv: neither a file nor a column" in err and not (tmp_path / "o").exists()


def test_validate_coarse_end_to_end(capsys, tmp_path):
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io.outputs import write_h5ad

    sample = write_h5ad(synthetic_sample(seed=4, n_genes=60), tmp_path / "section.h5ad")
    out = tmp_path / "coarse"
    code = cli.main(["validate-coarse", str(sample), "--genes", "30", "--max-epochs", "3",
                     "--stride-um", "48", "--split-counts", "--device", "cpu", "--out", str(out),
                     "--quiet"])
    text = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    scores = summary["validate_coarse"]
    assert "Coarse-to-fine check" in text and "noise ceiling" in text
    assert f"{scores['x_better_simple']:.2f}x the better" in text
    coarse = ad.read_h5ad(out / "coarse.h5ad")
    spots = ad.read_h5ad(out / "spots.h5ad")
    source = ad.read_h5ad(sample)
    # the pseudo-spots hold the summed raw counts of every gene of the input: with
    # --split-counts, of one binomial half (the other half is what they are scored against)
    assert list(coarse.var_names) == list(source.var_names) and scores["split_counts"]
    assert 0.45 < coarse.layers["counts"].sum() / source[spots.obs_names].X.sum() < 0.55
    from napari_trihrge.metrics import split_counts
    from napari_trihrge.pp import normalize_log1p

    _, held = split_counts(source.X, seed=0)  # the other half (RunConfig's seed)
    held = ad.AnnData(X=held, obs=source.obs[[]], var=source.var[[]])
    np.testing.assert_allclose(spots.layers["measured"], normalize_log1p(
        held[spots.obs_names], genes=list(spots.var_names)), rtol=1e-5)
    assert set(spots.obs["coarse_id"]) <= set(coarse.obs_names)
    assert set(spots.obs_names) <= set(source.obs_names)
    assert {"measured", "pseudo_spot", "pseudo_spot_others", "knn6", "knn12", "ridge_image",
            "nearest_virtual"} <= set(spots.layers)
    assert scores["n_spots_scored"] == spots.n_obs and scores["n_pseudo_spots"] == coarse.n_obs
    assert 0 < scores["fraction_of_ceiling"] == pytest.approx(
        scores["pcc_mean"] / scores["noise_ceiling_pcc_mean"])
    genes = pd.read_csv(out / "validate_coarse_genes.csv", index_col=0)
    assert {"pcc", "pcc_pseudo_spot", "pcc_nearest_virtual", "noise_ceiling"} <= set(genes)
    assert (out / "maps.ome.zarr").is_dir()


def test_validate_coarse_refuses_a_factor_leaving_too_few_pseudo_spots(capsys, tmp_path,
                                                                        sample_h5ad):
    out = tmp_path / "coarse"
    code = cli.main(["validate-coarse", str(sample_h5ad), "--factor", "4", "--out", str(out),
                     "--quiet"])
    assert code == 2
    assert "pseudo-spots" in capsys.readouterr().err
    assert not out.exists()


def test_validate_coarse_on_a_scattered_counts_folder_says_why(capsys, tmp_path):
    """The layout of a real folder never seen (counts only as filtered_feature_bc_matrix/) with
    spots scattered over the slide, as scanpy's 100-spot Visium test folder: read, then refused
    before any work with the reason."""
    from PIL import Image

    from sample_folders import make_visium_folder

    folder = make_visium_folder(tmp_path, n_rows=12, n_cols=12, matrix="mex")
    for res, scalef in (("hires", 0.2), ("lowres", 0.05)):  # an image the 12 x 24 lattice fits
        Image.new("RGB", (int(2500 * scalef), int(2100 * scalef)), (200, 120, 170)).save(
            folder / "spatial" / f"tissue_{res}_image.png")
    positions = folder / "spatial" / "tissue_positions.csv"
    table = pd.read_csv(positions)
    # every other row, every fourth column: 36 spots under the tissue, no two of them adjacent
    scattered = (table["array_row"] % 2 == 0) & (table["array_col"] % 4 == 0)
    table["in_tissue"] = scattered.astype(int)
    table.to_csv(positions, index=False)
    out = tmp_path / "coarse"
    code = cli.main(["validate-coarse", str(folder), "--out", str(out), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "the spots are scattered" in err and "not a subsample" in err
    assert not out.exists()


def test_cells_from_a_run_and_from_a_sample(capsys, tmp_path):
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io.outputs import write_h5ad

    sample = tmp_path / "small.h5ad"
    write_h5ad(synthetic_sample(seed=5, size_um=(600.0, 600.0), n_genes=40), sample)
    run = tmp_path / "run"
    err = _one_line_error(capsys, ["enhance", str(sample), "--cells", "--out", str(run)])
    assert "--stride-um" in err
    assert cli.main(["enhance", str(sample), "--genes", "20", "--max-epochs", "2",
                     "--factor", "2", "--stride-um", "16", "--no-trust", "--device", "cpu",
                     "--out", str(run), "--quiet", "--cache-dir", str(tmp_path / "c"),
                     "--cells"]) == 0
    assert "Cells: " in capsys.readouterr().out
    with_run = ad.read_h5ad(run / "cells" / "cells.h5ad")  # enhance --cells
    genes = list(ad.read_h5ad(run / "enhanced.h5ad").var_names)
    gene = genes[0]
    regions = tmp_path / "regions.geojson"
    regions.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[0, 0], [300, 0], [300, 600], [0, 600], [0, 0]]]},
        "properties": {"objectType": "annotation", "classification": {"name": "Left"}}}]}))
    # the run's sample is read again from the file the run read it from (its summary)
    assert json.loads((run / "summary.json").read_text())["read_from"] == str(sample.resolve())
    out = run / "cells2"
    assert cli.main(["cells", str(run), "--geojson", gene,
                     "--regions", str(regions), "--quiet", "--out", str(out)]) == 0
    assert "cells (built-in segmentation" in capsys.readouterr().out
    cells = ad.read_h5ad(out / "cells.h5ad")
    np.testing.assert_allclose(cells.X, with_run.X, rtol=1e-6)  # the same cells both ways
    assert list(cells.var_names) == genes and np.isfinite(cells.X).all() and cells.n_obs > 100
    assert set(cells.obs["region"].unique()) == {"Left", ""}
    left = cells.obs["region"] == "Left"
    assert (cells.obs.loc[left, "x_px"] < 300).all() and (cells.obs.loc[~left, "x_px"] > 299).all()
    feats = json.loads((out / "cells.geojson").read_text())["features"]
    assert len(feats) == cells.n_obs and gene in feats[0]["properties"]["measurements"]
    import tifffile

    labels = tifffile.imread(out / "cells.tif")
    assert labels.shape == (600, 600) and labels.max() == cells.n_obs
    # the same labels brought back as one's own cells give the same cells
    mine = tmp_path / "mine"
    assert cli.main(["cells", str(sample), "--cells", str(out / "cells.tif"),
                     "--out", str(mine), "--quiet"]) == 0
    again = ad.read_h5ad(mine / "cells.h5ad")
    assert again.n_obs == cells.n_obs and again.n_vars == 0
    np.testing.assert_allclose(again.obs["area_um2"], cells.obs["area_um2"])
    capsys.readouterr()
    # refused before any work: genes without a run, an output that exists, a wrong shape
    err = _one_line_error(capsys, ["cells", str(sample), "--geojson", gene, "--out",
                                   str(tmp_path / "x"), "--quiet"])
    assert "--run" in err
    err = _one_line_error(capsys, ["cells", str(sample), "--out", str(mine), "--quiet"])
    assert "--overwrite" in err
    np.save(tmp_path / "bad.npy", np.zeros((10, 10), dtype=np.int32))
    err = _one_line_error(capsys, ["cells", str(sample), "--nuclei", str(tmp_path / "bad.npy"),
                                   "--out", str(tmp_path / "y"), "--quiet"])
    assert "10 x 10 px but the H&E is 600 x 600 px" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # another sample where the run's sample was: refused, and --sample is the way out
    write_h5ad(synthetic_sample(seed=6, size_um=(500.0, 500.0), n_genes=40), sample)
    err = _one_line_error(capsys, ["cells", str(run), "--quiet", "--out", str(tmp_path / "z")])
    assert "another sample" in err and "--sample" in err


def test_cells_from_a_run_with_a_map_store_equal_the_cells_from_materialised_maps(tmp_path):
    """enhance --cells: the cells read each gene from the factorised store (the default) and
    get the same expression as from a run's materialised maps (--materialise-maps; the same
    model, seed and grid)."""
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io.outputs import write_h5ad

    sample = tmp_path / "small.h5ad"
    write_h5ad(synthetic_sample(seed=5, size_um=(600.0, 600.0), n_genes=40), sample)
    common = ["enhance", str(sample), "--genes", "20", "--max-epochs", "2", "--factor", "2",
              "--stride-um", "16", "--no-trust", "--device", "cpu", "--quiet", "--cells",
              "--cache-dir", str(tmp_path / "c")]
    assert cli.main(common + ["--out", str(tmp_path / "dense"), "--materialise-maps"]) == 0
    assert cli.main(common + ["--out", str(tmp_path / "store")]) == 0
    assert (tmp_path / "store" / "maps.store.zarr").is_dir()
    assert not (tmp_path / "store" / "maps.ome.zarr").exists()
    dense = ad.read_h5ad(tmp_path / "dense" / "cells" / "cells.h5ad")
    stored = ad.read_h5ad(tmp_path / "store" / "cells" / "cells.h5ad")
    assert list(stored.var_names) == list(dense.var_names) and stored.n_obs == dense.n_obs > 100
    np.testing.assert_allclose(stored.X, dense.X, rtol=1e-4, atol=1e-4)


def test_predict_cells_on_a_bare_image_and_cells_in_other_formats(capsys, tmp_path):
    """predict --cells on a slide never sequenced: cells with the predicted expression, no spot
    constraint (said in uns and on the console); cells --formats writes OME-Zarr labels and a
    SpatialData table annotating the cell labels."""
    from PIL import Image

    from napari_trihrge import io
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io.outputs import write_h5ad

    sample = tmp_path / "small.h5ad"
    write_h5ad(synthetic_sample(seed=5, size_um=(600.0, 600.0), n_genes=40), sample)
    model = tmp_path / "model"
    assert cli.main(["train", str(sample), "--image-only", "--genes", "20", "--max-epochs", "2",
                     "--device", "cpu", "--out", str(model), "--quiet"]) == 0
    png = tmp_path / "slide.png"
    Image.fromarray(np.asarray(io.get_image(io.read(sample)).array)).save(png)
    capsys.readouterr()
    err = _one_line_error(capsys, ["predict", str(model), str(sample), "--cells", "--out",
                                   str(tmp_path / "no_maps"), "--quiet"])
    assert "--stride-um" in err and not (tmp_path / "no_maps").exists()
    out = tmp_path / "bare"
    assert cli.main(["predict", str(model), str(png), "--um-per-px", "1", "--stride-um", "16",
                     "--factor", "2", "--out", str(out), "--quiet", "--cells",
                     "--cell-formats", "ome-zarr"]) == 0
    assert "no spot constraint" in capsys.readouterr().out
    assert (out / "cells" / "labels.ome.zarr" / "labels" / "cells").is_dir()
    cells = ad.read_h5ad(out / "cells" / "cells.h5ad")
    genes = list(ad.read_h5ad(out / "enhanced.h5ad").var_names)
    assert cells.n_obs > 100 and list(cells.var_names) == genes
    assert np.isfinite(cells.X).all() and np.asarray(cells.X).std(axis=0).max() > 0
    assert (cells.obs["spot"] == "").all()
    info = cells.uns["trihrge"]["cells"]
    assert not info["spot_constraint"] and "no measured spots" in info["note"]
    # the same slide's cells written as OME-Zarr labels and a SpatialData store as well
    pytest.importorskip("spatialdata")
    fmt = tmp_path / "formats"
    assert cli.main(["cells", str(sample), "--formats", "ome-zarr,spatialdata", "--out",
                     str(fmt), "--quiet"]) == 0
    import tifffile

    from napari_trihrge.tl._cells import read_labels

    labels = tifffile.imread(fmt / "cells.tif")
    back = read_labels(fmt / "labels.ome.zarr" / "labels" / "cells", labels.shape)
    np.testing.assert_array_equal(back, labels)
    summary = json.loads((fmt / "summary.json").read_text())
    assert summary["outputs"]["spatialdata"] == "cells.spatialdata.zarr"
    err = _one_line_error(capsys, ["cells", str(sample), "--formats", "zarr", "--out",
                                   str(tmp_path / "z"), "--quiet"])
    assert "ome-zarr" in err


def test_recovery_with_other_sections(capsys, sample_h5ad, tmp_path):
    """``--with OTHER``: the other section's spots join training; the section itself, or a
    model folder, is refused before any work."""
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io.outputs import write_h5ad

    other = tmp_path / "other.h5ad"
    write_h5ad(synthetic_sample(seed=8, size_um=(900.0, 900.0), n_genes=80), other)
    base = ["recovery", str(sample_h5ad), "--genes", "30", "--max-epochs", "2", "--device",
            "cpu", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "rec"
    assert cli.main([*base, "--out", str(out), "--with", str(other),
                     "--reference-weight", "2"]) == 0
    rec = json.loads((out / "summary.json").read_text())["recovery"]
    assert rec["reference_weight"] == 2.0 and len(rec["reference_spots"]) == 1
    assert "learned also from 1 other section" in capsys.readouterr().out
    assert cli.main([*base, "--out", str(tmp_path / "x"), "--with", str(sample_h5ad)]) != 0
    assert "is the sample itself" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_recovery_with_a_trained_model(capsys, sample_h5ad, tmp_path):
    """``--with MODEL``: a model trained on another section joins the blend as a candidate and
    is scored; a damaged model folder is refused before any work."""
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io.outputs import write_h5ad

    other = tmp_path / "other.h5ad"
    write_h5ad(synthetic_sample(seed=8, size_um=(900.0, 900.0), n_genes=80), other)
    model = tmp_path / "model"
    assert cli.main(["train", str(other), "--image-only", "--genes", "30", "--max-epochs", "2",
                     "--device", "cpu", "--out", str(model), "--quiet",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    base = ["recovery", str(sample_h5ad), "--genes", "30", "--max-epochs", "2", "--device",
            "cpu", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    capsys.readouterr()
    out = tmp_path / "rec"
    assert cli.main([*base, "--out", str(out), "--with", str(model)]) == 0, capsys.readouterr().err
    rec = json.loads((out / "summary.json").read_text())["recovery"]
    assert rec["reference_models"] == ["model"] and rec["reference_model_genes"][0] >= 10
    assert rec["blend_weight_model_mean"] >= 0.0
    assert f"(alone: mean PCC {rec['baseline_model_pcc_mean']:.3f})" in capsys.readouterr().out
    (model / "model.json").write_text("{ not json")
    assert cli.main([*base, "--out", str(tmp_path / "y"), "--with", str(model)]) != 0
    assert "the model folder is damaged" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
