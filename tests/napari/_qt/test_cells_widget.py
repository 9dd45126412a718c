"""The Cells panel: cells found in a worker (progress, cancel), a Labels layer in micrometres
coloured by the shown gene without new labels, a clicked cell described, and the Region
explorer comparing regions on cells."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import truth_dense_maps

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def small():
    """A 600 x 600 um synthetic section and its truth as maps (a stand-in for Enhance)."""
    import napari_trihrge as th

    adata = th.datasets.synthetic_sample(seed=2, size_um=(600.0, 600.0), n_genes=8)
    return adata, truth_dense_maps(adata)


def _open(viewer, small):
    from napari_trihrge.napari._qt import CellsWidget

    adata, maps = small
    w = CellsWidget(viewer)
    w.session.set_sample(adata)
    w.session.enhance = SimpleNamespace(maps=maps, virtual=None, trust=None)
    return w


def test_cells_found_in_a_worker_and_coloured_by_the_gene_on_demand(viewer, qtbot, small):
    from napari_trihrge.napari import layers as L

    adata, maps = small
    w = _open(viewer, small)
    assert w.start() is not None and w.running
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    assert w.last_outcome.status == "ok", w.last_outcome.message
    (layer,) = w.cells_layers()
    result = w.last_outcome.result
    cells = result.cells
    assert layer.data is result.cell_labels and int(layer.data.max()) == cells.n_obs > 50
    assert tuple(layer.scale) == pytest.approx((result.um_per_px,) * 2)
    assert f"{cells.n_obs} cells" in w.status.text()
    # a gene shown anywhere recolours the cells on the session's scale; the labels stay
    gene_a, gene_b = list(maps.gene_names)[:2]
    data_before = layer.data
    w.session.show_gene(gene_a)
    colours_a = {k: np.asarray(layer.colormap.color_dict[k]) for k in (1, 2, 3)}
    limits = w.session.contrast_limits
    expected = L.cell_gene_colors(cells, gene_a, limits)
    for k in (1, 2, 3):
        np.testing.assert_allclose(colours_a[k], expected[k], atol=1e-6)
    w.session.show_gene(gene_b)
    assert layer.data is data_before and layer.metadata["trihrge"]["gene"] == gene_b
    values = np.asarray(cells[:, [gene_a, gene_b]].X)
    differ = [k for k in range(1, 40) if abs(values[k - 1, 0] - values[k - 1, 1]) > 0.3]
    assert differ
    assert not np.allclose(
        [layer.colormap.color_dict[k] for k in differ],
        [L.cell_gene_colors(cells, gene_a, w.session.contrast_limits)[k] for k in differ])
    # clicking a cell describes it; hovering shows the same features in the status bar
    k = 5
    centre_um = cells.obs.iloc[k - 1][["row_um", "col_um"]].to_numpy(dtype=float)
    rr, cc = np.nonzero(layer.data == k)
    inside = np.array([rr[len(rr) // 2], cc[len(cc) // 2]], dtype=float) * result.um_per_px
    w._describe(layer, SimpleNamespace(position=tuple(inside + layer.translate)))
    text = w.cell_info.text()
    assert text.startswith(f"cell {k}:") and "um²" in text and "top genes" in text
    assert f"{cells.obs.iloc[k - 1]['area_um2']:.0f} um²" in text
    status = layer.get_status(tuple(inside + layer.translate), world=True)
    assert "top_genes" in str(status)
    assert np.all(np.isfinite(centre_um))


def test_cancel_leaves_nothing_behind(viewer, qtbot, small):
    w = _open(viewer, small)
    w.start()
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    assert w.last_outcome.status == "cancelled"
    assert w.cells_layers() == [] and "Cancelled" in w.status.text()


def test_region_explorer_compares_regions_on_cells(viewer, qtbot, small):
    from napari_trihrge import regions as R
    from napari_trihrge.napari._qt import RegionExplorer

    adata, maps = small
    w = _open(viewer, small)
    rx = RegionExplorer(viewer)
    rx.unit_combo.setCurrentIndex(rx.unit_combo.findData("cells"))
    layer = rx.regions_layer(create=True)
    box = np.array([[0.0, 0.0], [0.0, 300.0], [600.0, 300.0], [600.0, 0.0]])
    layer.add_rectangles([box])
    assert rx.compute() is None and "Cells panel" in rx.message.text()
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    cells = w.last_outcome.result.cells
    stats = rx.compute()
    assert stats is not None
    t = stats.table
    assert {"n_cells_inside", "n_cells_outside", "cells_inside", "fdr"} <= set(t.columns)
    assert "n_spots_inside" not in t.columns
    left = (cells.obs["col_um"] <= 300.0).to_numpy()
    assert stats.summary.loc[0, "cells_inside"] == left.sum() > 20
    assert (t["n_cells_inside"] == left.sum()).all()
    assert (t["n_cells_outside"] == (~left).sum()).all()
    # the same test as on spots, with the cells as the points
    gene = t.iloc[0]["gene"]
    x = np.asarray(cells[:, gene].X).ravel()
    assert t.iloc[0]["cells_inside"] == pytest.approx(x[left].mean(), rel=1e-5)
    z, p = R.rank_sum_test(x[:, None], left)
    assert t.iloc[0]["p_value"] == pytest.approx(float(p[0]), rel=1e-6)
    assert np.isfinite(t["fdr"]).all()
    assert "optimistic" in rx.message.text() and "cells" in rx.message.text()
    # cells outside the map have no expression (NaN): left out, not counted as 0
    outside_map = np.flatnonzero(~left)[:3]
    cells.X = np.asarray(cells.X, dtype=np.float32)
    cells.X[outside_map] = np.nan
    rx._invalidate()
    again = rx.compute().table
    assert (again["n_cells_outside"] == (~left).sum() - 3).all()
    assert np.isfinite(again["cells_outside"]).all()
    # back on spots: the spot table
    rx.unit_combo.setCurrentIndex(rx.unit_combo.findData("spots"))
    qtbot.waitUntil(lambda: "n_spots_inside" in rx.stats.table.columns, timeout=10_000)


def test_cells_opened_without_the_cells_panel_follow_the_gene(viewer, small):
    """A cells layer added by the reader or a script (no Cells panel open) is coloured by the
    gene shown, on the session's scale, through the layer view."""
    import napari_trihrge as th
    from napari_trihrge.napari import layers as L
    from napari_trihrge.napari._qt._session import get_session, get_view

    adata, maps = small
    result = th.tl.cells(adata.copy(), maps=maps)
    session = get_session(viewer)
    get_view(viewer)
    session.set_sample(adata)
    session.enhance = SimpleNamespace(maps=maps, virtual=None, trust=None)
    data, kwargs, _ = L.cells_layer(result.cell_labels, result.um_per_px, result.cells)
    layer = viewer.add_labels(data, **kwargs)
    gene = list(maps.gene_names)[1]
    session.show_gene(gene)
    assert layer.metadata["trihrge"]["gene"] == gene
    expected = L.cell_gene_colors(result.cells, gene, session.contrast_limits)
    for k in (1, 2, 3):
        np.testing.assert_allclose(np.asarray(layer.colormap.color_dict[k]), expected[k],
                                   atol=1e-6)
