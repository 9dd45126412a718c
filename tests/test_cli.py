"""The ``trihrge`` command line: help texts with units, small end-to-end runs, input errors as
exit code 2 with a one-line reason, the encoder list."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_trihrge import cli


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


@pytest.fixture(scope="module")
def sample_h5ad(tmp_path_factory):
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.outputs import write_h5ad

    path = tmp_path_factory.mktemp("cli") / "tiny.h5ad"
    write_h5ad(synthetic_sample(seed=4, size_um=(900.0, 900.0), n_genes=40), path)
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
    # the same output folder again without --overwrite: refused with a one-line reason
    err = _one_line_error(capsys, ["enhance", str(sample_h5ad), "--genes", "30",
                                   "--max-epochs", "3", "--out", str(out), "--quiet"])
    assert "--overwrite" in err


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
    for key in ("pcc_top100", "n_genes_constant_prediction", "baseline_knn6_pcc_mean",
                "baseline_knn12_pcc_mean", "baseline_knn_pcc_top100"):
        assert key in rec, key


def test_cohort_with_finished_samples_needs_no_cluster(capsys, sample_h5ad, tmp_path):
    out = tmp_path / "cohort"
    (out / "tiny").mkdir(parents=True)
    (out / "tiny" / "summary.json").write_text("{}")
    assert cli.main(["cohort", str(sample_h5ad), "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert (out / "cohort_report.csv").exists()


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
    for name in ("enhanced.h5ad", "maps.ome.zarr", "overview.png", "summary.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predict"]["target"] == "image" and summary["predict"]["map_locations"] > 0
    # a sample with spots: scored at its measured spots
    code = cli.main(["predict", str(model), str(sample_h5ad), "--factor", "2", "--out",
                     str(tmp_path / "o3"), "--quiet"])
    assert code == 0
    assert "measured spots" in capsys.readouterr().out
    err = _one_line_error(capsys, ["predict", str(model), str(sample_h5ad), "--encoder", "uni",
                                   "--out", str(tmp_path / "o4"), "--quiet"])
    assert "encoder mismatch" in err and "stain-texture" in err
