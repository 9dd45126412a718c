"""Train once, apply elsewhere: tl.train on two synthetic sections, tl.predict on a third from its
image alone (against the known truth) and on its spots (against the measurement), the model
folder's description and its refusals, pixel sizes from image metadata."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_MODEL, TINY_TRAIN
from napari_trihrge import tl as tasks
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.io.map_store import FLOAT16_TOLERANCE
from napari_trihrge.io.model_folder import load_model_folder, write_integrity_record
from napari_trihrge.tl import inference
from napari_trihrge.workflows.runs import run_predict

CLASSES = ("marker", "density", "gradient", "noise")


def _sample(seed: int):
    from napari_trihrge.datasets import synthetic_sample

    adata = synthetic_sample(seed=seed, size_um=(1200.0, 1200.0))
    cls = adata.var["gene_class"].to_numpy()
    keep = np.concatenate([np.flatnonzero(cls == c)[:6] for c in CLASSES])
    return adata[:, keep].copy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An image-only model trained on synthetic sections of seeds 1 and 2, saved and read back,
    and the third section (seed 3) it has never seen."""
    sections = [_sample(1), _sample(2)]
    cfg = tasks.RunConfig(n_top_genes=24, model=dict(SMALL_MODEL),
                          train={**TINY_TRAIN, "max_epochs": 20, "patience": 8})
    res = tasks.train(sections, image_only=True, config=cfg)
    folder = tmp_path_factory.mktemp("model") / "model"
    res.model.save(folder)
    return res, folder, _sample(3)


def test_model_folder_describes_itself(trained):
    res, folder, _ = trained
    meta = json.loads((folder / "model.json").read_text())
    desc = meta["extra"]
    assert desc["encoder"]["name"] == "stain-texture" and desc["encoder"]["config_key"]
    assert desc["features"]["windows_um"] == [112.0, 336.0]
    assert desc["features"]["bag_windows_um"] == [24.0, 112.0, 336.0]
    assert desc["features"]["standardisation"] == "per-section"
    assert desc["neighbour_input"] is False
    assert desc["normalisation"]["target_sum"] == 1e4
    assert desc["genes"] == res.model.genes and len(desc["genes"]) == 24
    names = [s["name"] for s in desc["training_sections"]]  # both samples are 'synthetic'
    assert "seed=1" in names[0] and "seed=2" in names[1]
    for sec in desc["training_sections"]:  # fair held-out scores of every training section
        # the image-only model sees the domains: most genes beat the training mean, a constant
        # (measured: PCC 0.43-0.50, about the kNN baseline's 0.47-0.48)
        scores = sec["scores"]
        assert sec["n_heldout_spots"] > 0 and scores["pcc_mean"] > 0.25
        assert scores["fraction_genes_better_than_train_mean"] > 0.5
    assert desc["package_version"]
    loaded = load_model_folder(folder)
    table = loaded.gene_table
    assert list(table.index) == res.model.genes
    assert {"train_mean", "pcc", "pcc_baseline_knn", "pcc_gain", "beats_interpolation"} <= set(
        table.columns)
    # weights come back identical
    import torch

    for a, b in zip(res.model.nets[0].state_dict().values(),
                    loaded.nets[0].state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())


def test_predicts_an_unseen_section_from_its_image_alone(trained, tmp_path):
    """A bare H&E (PNG, pixel size given) of the third section: the dense map follows the truth
    where the training mean (a constant, fair PCC 0) cannot."""
    from napari_trihrge.evaluation import truth_on_grid
    from napari_trihrge.metrics import fair_pcc

    _, folder, target = trained
    png = tmp_path / "section3.png"
    Image.fromarray(target.uns["spatial"]["synthetic"]["images"]["hires"]).save(png)
    summary = run_predict(folder, png, tmp_path / "out", um_per_px=1.0, factor=2,
                          stride_um=32.0, materialise_maps=True)
    out = tmp_path / "out"
    for name in ("enhanced.h5ad", "maps.store.zarr", "maps.ome.zarr", "overview.png",
                 "summary.json", "predict_genes.csv"):
        assert (out / name).exists(), name
    assert summary["predict"]["target"] == "image"
    from napari_trihrge.io.outputs import read_run

    run = read_run(out)
    virtual = run["enhanced"]
    assert virtual.n_obs == summary["predict"]["n_virtual_spots"] > 50
    assert not virtual.obs["is_measured"].any()
    values, um_per_px, names, origin = run["maps"]
    assert names == list(virtual.var_names)
    from napari_trihrge.tl import DenseMaps

    maps = DenseMaps(values=np.asarray(values), stride_um=float(um_per_px),
                     origin_rc_um=np.asarray(origin), gene_names=list(virtual.var_names),
                     mask=np.isfinite(np.asarray(values)[0]))
    truth = truth_on_grid(target, maps, maps.gene_names)
    inside = maps.mask & (truth.sum(axis=0) > 0)
    pred = np.asarray(values)[:, inside].T
    r = fair_pcc(pred, truth[:, inside].T)
    r_mean = fair_pcc(np.ones_like(pred) * pred.mean(axis=0), truth[:, inside].T)
    cls = target.var["gene_class"].reindex(maps.gene_names).to_numpy()
    informative = np.isin(cls, ["marker", "density"])
    assert np.nanmean(r_mean) == 0.0
    assert np.nanmean(r[informative]) > 0.3, r[informative]
    assert np.nanmean(r) > 0.1


def test_predicts_a_section_with_spots_and_scores_it(trained):
    _, folder, target = trained
    res = tasks.predict(folder, target, factor=2)
    v = res.virtual
    measured = v[v.obs["is_measured"].to_numpy()]
    # the predictions at measured spots keep their barcodes, in order
    assert list(measured.obs_names) == list(target.obs_names)
    assert (measured.obs["parent"] == measured.obs_names).all()
    assert v.n_obs == 2 * target.n_obs
    s = res.metrics["spots"]
    assert s["n_spots"] == target.n_obs
    # image alone, on a section never seen: a real pattern, and a lower error than the
    # training mean
    assert s["pcc_mean"] > 0.2, s
    assert s["mse"] < s["baseline_train_mean_mse"], s
    for col in ("pcc", "pcc_baseline_knn", "pcc_gain", "beats_interpolation"):
        assert col in v.var
    assert v.var["beats_interpolation"].dtype == bool


def test_refuses_a_mismatched_encoder_windows_or_version(trained, tmp_path):
    _, folder, target = trained
    with pytest.raises(TrihrgeInputError, match="encoder mismatch.*stain-texture"):
        load_model_folder(folder, encoder="uni")
    with pytest.raises(TrihrgeInputError, match=r"window sizes \(um\) mismatch"):
        inference.predict(folder, target, windows_um=(100.0, 300.0))
    newer = tmp_path / "newer"
    shutil.copytree(folder, newer)
    meta = json.loads((newer / "model.json").read_text())
    meta["extra"]["description_version"] = 99
    (newer / "model.json").write_text(json.dumps(meta))
    with pytest.raises(TrihrgeInputError, match="newer napari-trihrge") as err:
        load_model_folder(newer)
    assert "update" in err.value.args[-1]
    meta["extra"]["description_version"] = 1
    meta["extra"]["encoder"]["config_key"] = "stain-texture-v0|other"
    (newer / "model.json").write_text(json.dumps(meta))
    write_integrity_record(newer)  # as if saved so: the record matches, the encoder does not
    with pytest.raises(TrihrgeInputError, match="encoder version mismatch"):
        inference.predict(newer, target)
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    meta = json.loads((old / "model.json").read_text())
    meta["extra"] = {"genes": meta["extra"]["genes"]}  # a model folder from before descriptions
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.raises(TrihrgeInputError, match="no model description"):
        load_model_folder(old)


def test_bare_image_needs_a_pixel_size_and_an_image_only_model(trained, tmp_path):
    import dataclasses

    res, _, target = trained
    png = tmp_path / "slide.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(png)
    with pytest.raises(TrihrgeInputError, match="pixel size") as err:
        inference.predict(res.model, png)
    assert "--um-per-px" in err.value.args[-1]
    with_nb = dataclasses.replace(res.model, description={**res.model.description,
                                                          "neighbour_input": True})
    with pytest.raises(TrihrgeInputError, match="no spots") as err:
        inference.predict(with_nb, png, um_per_px=1.0)
    assert "--image-only" in err.value.args[-1]


def test_pixel_size_from_image_metadata(tmp_path):
    import tifffile

    from napari_trihrge.io.image import pixel_size_from_metadata

    rgb = np.zeros((32, 32, 3), np.uint8)
    ome = tmp_path / "a.ome.tif"
    tifffile.imwrite(ome, rgb, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"})
    assert pixel_size_from_metadata(ome) == pytest.approx(0.5)
    svs = tmp_path / "b.tif"
    tifffile.imwrite(svs, rgb, photometric="rgb", description="Aperio Image |MPP = 0.2527|")
    assert pixel_size_from_metadata(svs) == pytest.approx(0.2527)
    cm = tmp_path / "c.tif"
    tifffile.imwrite(cm, rgb, photometric="rgb", resolution=(20000, 20000),
                     resolutionunit="CENTIMETER")
    assert pixel_size_from_metadata(cm) == pytest.approx(0.5)
    screen = tmp_path / "d.tif"  # 72 dpi: a screen default, not a pixel size
    tifffile.imwrite(screen, rgb, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    assert pixel_size_from_metadata(screen) is None
    png = tmp_path / "e.png"
    Image.fromarray(rgb).save(png)
    assert pixel_size_from_metadata(png) is None


def test_run_model_folder_is_usable_by_predict(tmp_path):
    """The model/ of a recovery run is a described model folder: predict takes it (neighbour
    input from the target's spots) and refuses a bare image with a reason."""
    from napari_trihrge.workflows.runs import run_recovery

    adata = _sample(5)
    cfg = tasks.RunConfig(n_top_genes=24, model=dict(SMALL_MODEL), train=dict(TINY_TRAIN))
    run_recovery(adata, tmp_path / "rec", config=cfg)
    model = load_model_folder(tmp_path / "rec" / "model")
    assert model.description["task"] == "recovery" and not model.image_only
    assert model.description["training_sections"][0]["scores"]["pcc_mean"] is not None
    res = inference.predict(tmp_path / "rec" / "model", _sample(6), factor=2)
    # the model carries over to an unseen section (measured: PCC 0.43, kNN 0.44)
    assert res.metrics["spots"]["pcc_mean"] > 0.25
    with pytest.raises(TrihrgeInputError, match="dense"):
        inference.predict(model, _sample(6), stride_um=32.0)


def test_training_sections_get_distinct_names():
    import anndata as ad

    from napari_trihrge.tl._train import _section_names

    def section(sample, source=None):
        a = ad.AnnData(np.zeros((1, 1), np.float32))
        a.uns["trihrge"] = {"sample": sample, **({"source": source} if source else {})}
        return a

    assert _section_names([section("C2"), section("C3")]) == ["C2", "C3"]
    assert _section_names([section("synthetic", "/d/s1.h5ad"),
                           section("synthetic", "/d/s2.h5ad")]) == ["s1.h5ad", "s2.h5ad"]
    assert _section_names([section("x"), section("x")]) == ["x #1", "x #2"]


@pytest.mark.parametrize("factor", [1, 3, 32])
def test_predict_and_enhance_share_the_density_rule(trained, factor):
    """predict and enhance accept and refuse the same factors, before any work."""
    _, folder, target = trained
    with pytest.raises(TrihrgeInputError, match="density factor must be one of 2, 4, 8, 16"):
        tasks.predict(folder, target, factor=factor)
    with pytest.raises(TrihrgeInputError, match="density factor must be one of 2, 4, 8, 16"):
        tasks.enhance(target, factor=factor)


def test_predict_keeps_factorised_maps_equal_to_the_direct_ones(trained, tmp_path):
    """predict(map_store=...): the maps of a model folder from the store equal the direct
    prediction (a run folder gets maps.store.zarr instead of maps.ome.zarr)."""
    _, folder, target = trained
    direct = inference.predict(folder, target, stride_um=32.0)
    stored = inference.predict(folder, target, stride_um=32.0,
                               map_store=str(tmp_path / "maps.store.zarr"))
    assert stored.maps.path == tmp_path / "maps.store.zarr"
    inside = direct.maps.mask
    np.testing.assert_array_equal(stored.maps.mask, inside)
    diff = np.abs(np.asarray(stored.maps.values)[:, inside]
                  - np.asarray(direct.maps.values)[:, inside])
    assert diff.max() < FLOAT16_TOLERANCE  # a store on disk: float16 factors
    run_predict(folder, target, tmp_path / "run", stride_um=32.0)  # the store: the default
    assert (tmp_path / "run" / "maps.store.zarr").is_dir()
    assert not (tmp_path / "run" / "maps.ome.zarr").exists()
    run_predict(folder, target, tmp_path / "both", stride_um=32.0, materialise_maps=True)
    from napari_trihrge.io.writers import read_map

    np.testing.assert_allclose(np.asarray(read_map(tmp_path / "both" / "maps.ome.zarr")[0]),
                               np.asarray(direct.maps.values), atol=FLOAT16_TOLERANCE,
                               equal_nan=True)
    assert (tmp_path / "both" / "maps.store.zarr").is_dir()


# ------------------------------------------------------------------------------------------
# reliability: held-out scores within each section, refusals before any work
# ------------------------------------------------------------------------------------------
def test_held_out_scores_are_averaged_within_sections_not_pooled():
    """Two sections whose genes sit at different mean levels: a prediction that knows only
    each section's level (no skill within a section) looks good pooled, and scores about 0
    section by section, which is what train reports."""
    from napari_trihrge.tl._shared import _score_sections, _score_with_knn

    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(12)]
    parts = []
    for level in (1.0, 4.0):
        truth = level + rng.normal(0.0, 0.3, (80, len(genes)))
        pred = level + rng.normal(0.0, 0.3, (80, len(genes)))  # unrelated within the section
        knn = {f"knn{k}": level + rng.normal(0.0, 0.3, (80, len(genes))) for k in (6, 12)}
        parts.append((pred, truth, knn))
    pooled, _ = _score_with_knn(*(np.concatenate([p[i] for p in parts]) for i in (0, 1)), genes,
                                {k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]})
    summary, per_gene, by_section = _score_sections(parts, genes)
    assert pooled["pcc_mean"] > 0.8  # pooling counts the two levels as skill
    assert abs(summary["pcc_mean"]) < 0.15 and summary["n_sections"] == 2
    assert summary["pcc_mean"] == pytest.approx(np.mean([s["pcc_mean"] for s in by_section]))
    import pandas as pd

    each = pd.concat([_score_with_knn(*p[:2], genes, p[2])[1]["pcc"] for p in parts], axis=1)
    assert per_gene["pcc"].to_numpy() == pytest.approx(
        each.mean(axis=1).reindex(per_gene.index).to_numpy())


def test_train_reports_the_mean_of_the_sections(trained):
    res, folder, _ = trained
    held, sections = res.metrics["heldout"], res.metrics["sections"]
    assert held["n_sections"] == 2
    assert held["pcc_mean"] == pytest.approx(np.mean([s["scores"]["pcc_mean"]
                                                      for s in sections]))
    assert "within each section" in res.model.description["trust"]["pooling"]


def test_train_refuses_repeated_mixed_or_tiny_sections():
    one, two = _sample(1), _sample(2)
    with pytest.raises(TrihrgeInputError, match="are the same section"):
        tasks.train([one, one.copy()])
    st = two.copy()
    st.uns["trihrge"] = {**st.uns["trihrge"], "platform": "st", "spot_diameter_um": 100.0}
    with pytest.raises(TrihrgeInputError, match="100 um spots.*cannot train one model") as err:
        tasks.train([one, st])
    assert "one model per platform" in err.value.hint
    with pytest.raises(TrihrgeInputError, match="3 spots; training needs at least 20"):
        tasks.train([one, two[:3].copy()])
    with pytest.raises(TypeError, match=r"adatas\[0\] must be an AnnData.*io.read\('a.h5ad'\)"):
        tasks.train(["a.h5ad", one])


def test_predict_checks_its_arguments_before_any_work(trained, monkeypatch):
    _, folder, target = trained
    with pytest.raises(TypeError, match="got AnnData: did you swap model and target"):
        tasks.predict(target, folder)
    with pytest.raises(TypeError, match="target must be an AnnData.*got None"):
        tasks.predict(folder, None)
    with pytest.raises(TrihrgeInputError, match="stride must be a positive number.*nan"):
        tasks.predict(folder, target, stride_um=float("nan"))
    with pytest.raises(TrihrgeInputError, match="larger than half the image"):
        tasks.predict(folder, target, stride_um=5000.0)
    from napari_trihrge.tl import _maps

    monkeypatch.setattr(_maps, "_available_memory_bytes", lambda: 1e6)  # a tiny stride
    with pytest.raises(TrihrgeInputError, match="would need"):
        tasks.predict(folder, target, stride_um=2.0)


def test_predict_refuses_a_declared_pixel_size_far_from_the_lattice(trained):
    _, folder, target = trained
    wrong = target.copy()
    info = wrong.uns["trihrge"]
    wrong.uns["trihrge"] = {**info, "um_per_px": info["um_per_px"] * 2, "um_per_px_source":
                            "given", "um_per_px_estimates": {"lattice": info["um_per_px"]}}
    with pytest.raises(TrihrgeInputError, match=r"\(2\.0-fold apart\)") as err:
        tasks.predict(folder, wrong)
    assert "the spot lattice" in str(err.value)


def test_predict_refuses_a_declared_pixel_size_far_from_the_image_metadata(trained, tmp_path):
    import tifffile

    _, folder, target = trained
    tif = tmp_path / "section3.ome.tif"
    tifffile.imwrite(tif, target.uns["spatial"]["synthetic"]["images"]["hires"],
                     photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 1.0,
                                                  "PhysicalSizeY": 1.0})
    with pytest.raises(TrihrgeInputError, match=r"the declared pixel size \(--um-per-px\) gives "
                       r"0\.25 um/px but the image file's metadata gives 1 um/px \(4\.0-fold apart\)"):
        tasks.predict(folder, tif, um_per_px=0.25)


def test_predict_says_the_bin_size_of_visium_hd_bins(trained):
    _, folder, target = trained
    bins = target.copy()
    bins.uns["trihrge"] = {**bins.uns["trihrge"], "bin_size_um": 8.0}
    with pytest.warns(UserWarning, match="Visium HD bins of 8 um"):
        tasks.predict(folder, bins, factor=2)


def test_predict_never_writes_into_its_inputs(trained, tmp_path):
    import hashlib

    _, folder, target = trained

    def digest(path):
        return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(path.rglob("*")) if p.is_file()}

    before = digest(folder)
    for out in (folder, folder / "inside"):
        with pytest.raises(TrihrgeInputError, match="the output .* (is the|inside the) input"):
            run_predict(folder, target, out, overwrite=True, factor=2)
    assert digest(folder) == before


def test_predict_on_a_bare_image_says_when_the_trust_figures_are_missing(trained, tmp_path):
    import pandas as pd

    _, folder, target = trained
    model = load_model_folder(folder)
    model.gene_table = pd.DataFrame(index=pd.Index(["OTHER"], name="gene"),
                                    data={"pcc": [0.5]})
    png = tmp_path / "section3.png"
    Image.fromarray(target.uns["spatial"]["synthetic"]["images"]["hires"]).save(png)
    with pytest.warns(UserWarning, match="no held-out trust figures"):
        res = tasks.predict(model, png, um_per_px=1.0, factor=2, stride_um=64.0)
    assert res.virtual.var["pcc"].isna().all()
