"""The layer view draws the session model: no widget is needed between them."""

from __future__ import annotations

import numpy as np
import pytest

from qt_support import add_sample, fake_recovery

pytestmark = pytest.mark.gui


def test_the_view_draws_what_the_model_decides(viewer):
    from napari_trihrge.napari._qt._session import get_session, get_view

    _, spots = add_sample(viewer)
    model, view = get_session(viewer), get_view(viewer)
    assert model.adata is spots.metadata["adata"]  # the view handed the opened sample over
    result = fake_recovery(model.adata)
    shown = model.set_result("recovery", result)
    rec = view.find_layer("recovered")
    assert rec is not None and rec.metadata["adata"] is result.predictions
    gene = model.gene
    assert shown["spots"] and shown["recovered"]
    for layer in (spots, rec):  # one colour scale, the model's
        assert layer.metadata["trihrge"]["gene"] == gene
        assert tuple(layer.face_contrast_limits) == pytest.approx(model.contrast_limits)
    # a gene the predictions do not have: they are hidden, not left on the old gene
    other = next(g for g in model.adata.var_names if g not in result.predictions.var_names)
    assert not model.show_gene(other)["recovered"] and not rec.visible
    # removing the layer removes its data from the model too
    viewer.layers.remove(rec)
    assert model.source("recovered") is None


def test_a_closed_dock_is_not_called_back(viewer, qtbot):
    from qtpy.QtCore import QCoreApplication, QEvent

    from napari_trihrge.napari._qt import GeneExplorer
    from napari_trihrge.napari._qt._session import get_session

    add_sample(viewer)
    model = get_session(viewer)
    ge = GeneExplorer(viewer)
    n_before = len(model.gene_changed)
    assert n_before >= 1
    ge.deleteLater()  # the Python object lives on; its Qt widget is deleted
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    qtbot.waitUntil(lambda: len(model.gene_changed) < n_before, timeout=5000)
    gene = str(model.adata.var_names[0])
    assert model.show_gene(gene)["spots"]  # no call into the deleted widget
    assert np.isfinite(model.contrast_limits).all()
