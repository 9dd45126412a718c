"""The Train panel's list of other open samples to learn from (``reference=``)."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt

from qt_support import add_sample, sample_adata

pytestmark = pytest.mark.gui


def _add_other_sample(viewer, name="other section"):
    from napari_trihrge.napari import layers as L

    other = sample_adata().copy()
    other.uns["trihrge"] = {**other.uns["trihrge"], "sample": name}
    for data, kwargs, kind in L.sample_layers(other, None):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return other


def test_other_open_samples_are_listed_and_the_ticked_ones_reach_the_run(viewer, qtbot,
                                                                         notes, monkeypatch):
    from napari_trihrge.errors import TrihrgeInputError
    from napari_trihrge.napari._qt import TrainWidget
    from napari_trihrge.napari._qt._reference_list import ReferenceList
    from napari_trihrge.workflows import runs

    add_sample(viewer)
    tw = TrainWidget(viewer)
    refs = tw.findChild(ReferenceList)
    assert refs is not None and refs.list.count() == 0 and refs.references() is None
    other = _add_other_sample(viewer)
    session = tw.session
    session.set_sample(next(lay.metadata["adata"] for lay in viewer.layers
                            if lay.metadata.get("adata") is not None
                            and lay.metadata["adata"] is not other))
    # the other sample is listed, the current one never; nothing is ticked by default
    assert [refs.list.item(i).text() for i in range(refs.list.count())] == ["other section"]
    assert refs.references() is None
    refs.list.item(0).setCheckState(Qt.Checked)
    assert refs.references() == [other]

    seen = {}

    def fake_run_task(task, adata, out_dir=None, **kwargs):
        seen.update(kwargs, adata=adata)
        raise TrihrgeInputError("stopped by the test", "nothing to fix")

    monkeypatch.setattr(runs, "run_task", fake_run_task)
    tw.set_task("recovery")
    tw.start()
    qtbot.waitUntil(lambda: not tw.running, timeout=60_000)
    assert seen["reference"] == [other] and seen["adata"] is session.adata
    # the ticked sample made current: it is no longer offered as its own reference
    session.set_sample(other)
    assert "other section" not in [refs.list.item(i).text() for i in range(refs.list.count())]
    assert refs.references() is None
