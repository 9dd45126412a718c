"""Helpers shared by the GUI tests (tests/napari/_qt/); imported as ``from qt_support import``.

The synthetic sample is generated once (and cached on disk by the sample-data module); its known
8 um truth stands in for enhanced maps where a test only needs maps, not a trained model.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd


def sample_adata():
    from napari_trihrge.napari._sample_data import synthetic_adata

    return synthetic_adata(0)


def add_sample(viewer):
    """Add the synthetic sample's H&E and spots; returns (image layer, spots layer)."""
    from napari_trihrge.napari._sample_data import synthetic_sample

    added = [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in synthetic_sample()]
    return added[0], added[1]


def tiny_run_form(tw, monkeypatch, sw=None, *, max_epochs=None):
    """Set the Train panel as a user would for a fast run: the CPU, 30 variable genes, the
    'compact' model, few epochs. The test makes 'compact' tiny (the engine's preset, not the
    panel) so a run takes seconds."""
    from conftest import TINY_MODEL, TINY_RUN, TINY_TRAIN
    from napari_trihrge.tl import _config

    monkeypatch.setitem(_config.MODEL_PRESETS, "compact",
                        {**TINY_MODEL, "decoder_dims": tuple(TINY_MODEL["decoder_dims"])})
    if sw is not None:
        sw.device_combo.setCurrentText("cpu")
    else:
        monkeypatch.setattr(tw.session, "device", lambda: "cpu", raising=False)
    tw.genes_spin.setValue(TINY_RUN["n_top_genes"])
    tw.config_form["model_preset"].value = "compact"
    tw.epochs_spin.setValue(max_epochs or TINY_TRAIN["max_epochs"])


def truth_maps(adata=None):
    """The sample's 8 um truth, log-normalised per pixel like spots (counts / total x 1e4, log1p),
    as DenseMaps (NaN outside the tissue): a stand-in for enhanced maps on the spots' scale."""
    from napari_trihrge.tl import DenseMaps

    adata = adata if adata is not None else sample_adata()
    tr = adata.uns["truth"]
    expr = np.asarray(tr["expression_8um"], dtype=np.float32)
    total = expr.sum(axis=0, keepdims=True)
    vals = np.log1p(expr * np.divide(1e4, total, out=np.zeros_like(total), where=total > 0))
    mask = np.asarray(tr["tissue_8um"], dtype=bool)
    vals[:, ~mask] = np.nan
    return DenseMaps(values=vals, stride_um=float(tr["stride_um"]),
                     origin_rc_um=np.asarray(tr["origin_rc_um"], dtype=float),
                     gene_names=[str(g) for g in tr["genes"]], mask=mask)


def fake_enhance(adata=None):
    adata = adata if adata is not None else sample_adata()
    return SimpleNamespace(maps=truth_maps(adata), virtual=None, spots=adata, metrics={},
                           history=[], timings_s={})


def fake_recovery(adata=None, genes=("ERBB2", "TUMOR_3", "STROMA_4")):
    """A RecoveryResult-like object whose 'predictions' are the measured hidden half."""
    import anndata as ad

    from napari_trihrge.napari import layers as L

    adata = adata if adata is not None else sample_adata()
    hidden = np.arange(0, adata.n_obs, 2)
    expr = L.gene_expression(adata, list(genes)).to_numpy()[hidden]
    pred = ad.AnnData(X=expr, obs=pd.DataFrame(index=adata.obs_names[hidden]),
                      var=pd.DataFrame(index=list(genes)))
    pred.obsm["spatial"] = np.asarray(adata.obsm["spatial"])[hidden]
    pred.uns["trihrge"] = {**adata.uns["trihrge"], "task": "recovery"}
    n = len(genes)
    per_gene = pd.DataFrame({"pcc": np.resize([0.9, 0.8, 0.1], n),
                             "pcc_baseline": np.resize([0.5, 0.4, 0.2], n)},
                            index=pd.Index(list(genes), name="gene"))
    return SimpleNamespace(predictions=pred, per_gene=per_gene,
                           metrics={"pcc_mean": 0.6, "baseline_knn_pcc_mean": 0.37,
                                    "n_hidden": len(hidden), "n_genes_scored": 3},
                           history=[], timings_s={})


def fake_run_with_trust(adata=None, task="enhance", best=2):
    """An enhance (or, with ``task='predict'``, a prediction on a slide where nothing was
    measured) result with maps, stand-in virtual spots and per-gene trust: the first map gene
    has the highest held-out PCC but loses to kNN; gene ``best`` is the best that beats it."""
    adata = adata if adata is not None else sample_adata()
    res = fake_enhance(adata)
    genes = list(res.maps.gene_names)
    virtual = fake_recovery(adata, genes=tuple(genes)).predictions
    pcc = np.linspace(0.5, 0.1, len(genes))
    pcc[0], pcc[best] = 0.9, 0.8
    base = np.full(len(genes), 0.3)
    base[0] = 0.95
    trust = pd.DataFrame({"pcc": pcc, "pcc_baseline_knn": base, "pcc_gain": pcc - base,
                          "beats_interpolation": pcc > base}, index=pd.Index(genes, name="gene"))
    for col in trust.columns:
        virtual.var[col] = trust[col].to_numpy()
    virtual.uns["trihrge"] = {**virtual.uns["trihrge"], "task": task}
    if task == "predict":  # a bare slide: the trust comes from the training sections
        virtual.obs["is_measured"] = False
        res.trust = None
        res.metrics = {"n_virtual_spots": virtual.n_obs}
    else:
        res.trust = trust
        res.metrics = {"trust": {"pcc_mean": float(pcc.mean()),
                                 "baseline_knn_pcc_mean": float(base.mean()),
                                 "n_genes_scored": len(genes), "n_hidden": 100,
                                 "n_genes_beating_interpolation": int((pcc > base).sum())}}
    res.virtual = virtual
    return res


class Notifications:
    """Collects napari notifications (severity, message) while alive."""

    def __init__(self):
        from napari.utils.notifications import notification_manager

        self.items: list[tuple[str, str]] = []
        self._mgr = notification_manager
        notification_manager.notification_ready.connect(self._on)

    def _on(self, event):
        n = getattr(event, "value", event)
        self.items.append((str(n.severity).lower(), str(n.message)))

    def errors(self) -> list[str]:
        return [m for s, m in self.items if "error" in s]

    def close(self):
        self._mgr.notification_ready.disconnect(self._on)


def canvas_png(viewer, path=None) -> np.ndarray:
    """The canvas as an RGBA array (saved to ``path`` when given)."""
    return np.asarray(viewer.screenshot(path=None if path is None else str(path),
                                        canvas_only=True, flash=False))
