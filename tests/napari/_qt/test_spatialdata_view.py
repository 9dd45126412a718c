"""A store written by napari-trihrge opened in napari-spatialdata's own widget: the enhanced map
lands on the tissue of the H&E, in the same coordinate system. Skips without the extra."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_MODEL, TINY_TRAIN

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    pytest.importorskip("napari_spatialdata")
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io.spatialdata import write_spatialdata
    from napari_trihrge.tl import RunConfig, enhance

    sample = synthetic_sample(seed=4, size_um=(1200.0, 1200.0), n_genes=24, um_per_px=0.8)
    cfg = RunConfig(n_top_genes=24, model=TINY_MODEL, train=TINY_TRAIN)
    result = enhance(sample, factor=2, stride_um=16.0, config=cfg)
    path = write_spatialdata(tmp_path_factory.mktemp("sdgui") / "result.zarr", sample, result)
    return path, sample, result


def _tissue(rgb: np.ndarray) -> np.ndarray:
    """Stained pixels (the synthetic background is near-white glass)."""
    return np.asarray(rgb, dtype=float)[..., :3].mean(axis=-1) < 215


def test_map_lands_on_tissue_in_napari_spatialdata(viewer, qtbot, store):
    import spatialdata as sd
    from napari_spatialdata import Interactive
    from napari_spatialdata._reader import get_reader

    path, sample, result = store
    assert get_reader(str(path)) is not None  # napari-spatialdata's own reader takes the store
    interactive = Interactive(sd.read_zarr(path), headless=True)
    for n, name in enumerate(("he_image", "enhanced_maps", "spots"), start=1):
        interactive.add_element(name, "global")
        qtbot.waitUntil(lambda n=n: len(viewer.layers) == n, timeout=60_000)
    he, maps_layer, spots = (viewer.layers[n] for n in ("he_image", "enhanced_maps", "spots"))

    maps = result.maps
    # world position of every map pixel centre, through the layer's own transforms
    ii, jj = np.nonzero(maps.mask)
    world = np.array([maps_layer.data_to_world([0, i, j])[1:] for i, j in zip(ii, jj,
                                                                             strict=True)])
    np.testing.assert_allclose(world, maps.origin_rc_um + np.stack([ii, jj], 1) * maps.stride_um)
    # the H&E pixel under each map pixel (through the H&E layer's transforms) is tissue, by the
    # project's tissue detection run on the pixels the layer shows
    from napari_trihrge.io import TissueImage
    from napari_trihrge.tissue import tissue_mask_for

    he_img = np.asarray(he.data[0] if he.multiscale else he.data)
    tissue, mask_px = tissue_mask_for(TissueImage.from_array(he_img, 1.0), mask_um_per_px=8.0)

    def on_tissue_each(world_rc: np.ndarray) -> np.ndarray:
        px = np.array([he.world_to_data(w) for w in world_rc]) / mask_px
        r = np.rint(px[:, 0]).astype(int)
        c = np.rint(px[:, 1]).astype(int)
        inside = (r >= 0) & (r < tissue.shape[0]) & (c >= 0) & (c < tissue.shape[1])
        hit = np.zeros(len(r), dtype=bool)
        hit[inside] = tissue[r[inside], c[inside]]
        return hit

    def on_tissue(world_rc: np.ndarray) -> float:
        return float(on_tissue_each(world_rc).mean())

    # every map pixel, in the tissue mask or not: the map's mask agrees with the H&E's tissue
    ai, aj = np.nonzero(np.ones_like(maps.mask))
    world_all = np.array([maps_layer.data_to_world([0, i, j])[1:] for i, j in zip(ai, aj,
                                                                                 strict=True)])
    in_mask = maps.mask[ai, aj]

    def agreement(world_rc: np.ndarray) -> float:
        """Share of map-mask pixels on tissue minus share of off-mask pixels on tissue."""
        hit = on_tissue_each(world_rc)
        return float(hit[in_mask].mean() - hit[~in_mask].mean())

    placed = agreement(world_all)
    assert on_tissue(world) > 0.95 and placed > 0.9, placed
    # a map misplaced by 50 um, or with x and y swapped, agrees clearly less
    assert agreement(world_all + 50.0) < placed - 0.1
    assert agreement(world_all[:, ::-1]) < placed - 0.1
    # the measured spots (points at their centres) sit where the sample puts them
    from napari_trihrge import geometry

    rc_um = geometry.xy_px_to_rc_um(sample.obsm["spatial"], 0.8)
    spot_world = np.array([spots.data_to_world(p) for p in spots.data])
    np.testing.assert_allclose(np.sort(spot_world, axis=0), np.sort(rc_um, axis=0), atol=1e-6)
