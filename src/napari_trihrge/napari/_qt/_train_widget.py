"""Dock widget 2 - Train and enhance: run recovery or enhancement in the background.

The run goes through :func:`napari_trihrge.workflows.runs.run_task`, the CLI's path, in a worker;
the settings that are RunConfig fields come from :mod:`._config_form` (magicgui widgets generated
from RunConfig); the finished result goes to the session model, whose view adds the layers."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ...geometry import DEFAULT_DENSITY_FACTOR, DENSITY_FACTORS
from ...model.training import TrainConfig
from ...tl import recovery
from ...workflows._cli_options import keyword_default
from ._common import Panel, heading, hline, listen, note, notify_error
from ._config_form import ADVANCED_FIELDS, MAIN_FIELDS, RunConfigForm
from ._display import WARN_COLOUR
from ._engine_run import EngineRun
from ._reference_list import ReferenceList
from ._session import get_session, unwrap_viewer
from ._stage_bars import StageBars

#: plain-words explanation of every score the widget shows (also the scores' tooltip)
SCORE_HELP = {
    "pcc_mean": "Mean PCC, hidden spots: for each gene, the Pearson correlation between the "
                "predicted and the measured expression of the hidden spots (1 = perfect, 0 = no "
                "relation), averaged over every gene that varies there; a gene predicted as a "
                "constant counts as 0.",
    "baseline_knn_pcc_mean": "kNN baseline: the same score for plain interpolation, each hidden "
                             "spot taking the distance-weighted mean of its k nearest measured "
                             "spots (the better of k = 6 and 12). It uses no image: the model "
                             "is only worth it where it beats this.",
    "noise_ceiling_pcc_mean": "Noise ceiling: the best mean PCC any prediction could reach on "
                              "these spots, given the counting noise of the measurement (each "
                              "spot's counts split in two random halves, their agreement "
                              "corrected to full depth); the fraction shows how much of it the "
                              "model reaches.",
    "pcc_top100": "Mean PCC over the 100 most expressed scored genes (the genes a pathologist "
                  "usually looks at), model vs kNN.",
    "fraction_genes_better_than_baseline": "Share of the scored genes whose PCC is higher with "
                                           "the model than with kNN interpolation.",
    "n_genes_constant_prediction": "Genes the model predicts as the same value everywhere "
                                   "(they carry no spatial information; scored as PCC 0).",
    "mse": "MSE: mean squared difference between predicted and measured log-normalised "
           "expression on the hidden spots (lower is better).",
    "mae": "MAE: mean absolute difference between predicted and measured log-normalised "
           "expression on the hidden spots (lower is better).",
    "ari": "ARI: agreement (adjusted Rand index, 1 = identical, 0 = chance) between k-means "
           "clusters of the predicted expression and the annotated tissue layers.",
}

SETTING_HELP = {
    "task": "Enhance predicts expression between and within the measured spots (denser "
            "virtual spots and dense maps). Recovery hides some measured spots, predicts them "
            "and scores the prediction against what was measured.",
    "holdout": "Recovery only: the share of spots hidden from training and used for scoring.",
    "factor": "Enhance only: how many virtual spots per measured spot (2x, 4x, ...).",
    "maps": "Enhance only: also draw dense maps, one value per pixel of this size in "
            "micrometres (smaller = sharper, slower).",
    "epochs": "Most passes over the training spots (the training setting max_epochs); by "
              "default the training settings' own number, stopping early when the validation "
              "loss stops improving.",
    "advanced": "More RunConfig settings: which inputs the model uses, neighbours, the local "
                "window of the dense maps.",
    "out": "Optional folder where the run is saved (the same files as the command line).",
    "overwrite": "The folder chosen under Save to already holds files: tick to replace them "
                 "with this run (the old folder is swapped out only when the run completes).",
    "start": "Run the chosen task in the background; the viewer stays usable.",
    "cancel": "Stop the run at its next step; nothing is changed.",
}


#: the panel draws dense maps at this pixel size unless told otherwise (the CLI draws none
#: unless given --stride-um)
PANEL_MAP_STRIDE_UM = 16.0


def _score_tooltip(keys) -> str:
    return "<br><br>".join(SCORE_HELP[k] for k in keys if k in SCORE_HELP)


class LossCanvas(QWidget):
    """A small live plot of the training and validation loss per epoch (matplotlib)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.9), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.canvas.setFixedHeight(170)
        self.ax = self.figure.add_subplot(111)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.clear()

    def clear(self):
        self.epochs: list[float] = []
        self.train: list[float] = []
        self.val: list[float] = []
        self.n_networks = 0
        self._last_epoch = math.inf
        self.ax.clear()
        (self.train_line,) = self.ax.plot([], [], color="#1f77b4", label="training", lw=1)
        (self.val_line,) = self.ax.plot([], [], color="#ff7f0e", label="validation", lw=1)
        self.ax.set_xlabel("epoch", fontsize=8)
        self.ax.set_ylabel("loss", fontsize=8)
        self.ax.tick_params(labelsize=7)
        self.ax.legend(fontsize=7, loc="upper right")
        self.canvas.draw_idle()

    def add(self, epoch: float, train_loss: float, val_loss: float | None) -> None:
        # each network of a run (folds, ensemble members) restarts at epoch 1: its curve is
        # drawn over the same epochs as the others', the lines broken between networks
        if epoch <= self._last_epoch:
            if self.epochs:
                self.epochs.append(math.nan)
                self.train.append(math.nan)
                self.val.append(math.nan)
            self.n_networks += 1
        self._last_epoch = epoch
        self.epochs.append(epoch)
        self.train.append(train_loss)
        self.val.append(val_loss if val_loss is not None else math.nan)

    def redraw(self) -> None:
        self.train_line.set_data(self.epochs, self.train)
        self.val_line.set_data(self.epochs, self.val)
        self.ax.set_xlabel("epoch" if self.n_networks < 2 else
                           f"epoch (each of {self.n_networks} networks)", fontsize=8)
        self.ax.relim()
        self.ax.autoscale_view()
        self.canvas.draw_idle()


class TrainWidget(EngineRun, Panel):
    """Task, main parameters (with units), Start / Cancel, a progress bar per stage, the live
    loss curve and the recovery scores. The engine runs in a napari thread worker."""

    run_title = "The run"

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)

        self.task_combo = QComboBox()
        self.task_combo.addItem("Enhance: denser spots and sub-spot maps", "enhance")
        self.task_combo.addItem("Recovery: hide spots and score their prediction", "recovery")
        self.holdout_spin = QDoubleSpinBox()
        self.holdout_spin.setRange(5, 95)
        self.holdout_spin.setValue(100 * keyword_default(recovery, "holdout_fraction"))
        self.holdout_spin.setSuffix(" % of spots hidden")
        self.factor_combo = QComboBox()
        for f in DENSITY_FACTORS:
            self.factor_combo.addItem(f"{f}x denser spots", f)
        self.factor_combo.setCurrentIndex(self.factor_combo.findData(DEFAULT_DENSITY_FACTOR))
        self.maps_check = QCheckBox("dense maps, pixel")
        self.maps_check.setChecked(True)
        self.stride_spin = QDoubleSpinBox()
        self.stride_spin.setRange(2, 200)
        self.stride_spin.setValue(PANEL_MAP_STRIDE_UM)
        self.stride_spin.setSuffix(" um")
        # the RunConfig fields: magicgui widgets generated from the dataclass
        self.config_form = RunConfigForm(MAIN_FIELDS)
        self.advanced_form = RunConfigForm(ADVANCED_FIELDS)
        self.genes_spin = self.config_form["n_top_genes"].native
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(0, 100000)
        self.epochs_spin.setValue(0)
        self.epochs_spin.setSpecialValueText(
            f"default ({TrainConfig().max_epochs}, early stopping)")
        self.epochs_spin.setSuffix(" epochs at most")
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("optional: folder to save the run in")
        self.out_btn = QPushButton("…")
        self.overwrite_check = QCheckBox("replace what the folder holds")

        self.save_model_btn = QPushButton("Save the trained model…")
        self.save_model_btn.setToolTip("a model folder that `trihrge predict` and 'Apply a "
                                       "trained model' take")
        self.save_model_btn.setEnabled(False)
        self._last_run = None  # (task, token-free RunConfig, result) of the last finished run
        self.start_btn = QPushButton("Start")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.status = note("Open a sample, then press Start.")
        self.horizon = note("")
        self.horizon.setToolTip("The whole run: which phase, which network, and an estimate "
                                "of the time left from the pace so far.")
        self.bars = StageBars(self.status.setText, self.horizon.setText)
        self.asked_note = note("")
        self.asked_note.setToolTip("Every gene of the sample you showed by name in the Gene "
                                   "explorer is added to the run's genes, so it gets a map.")
        self.asked_note.setVisible(False)
        self.loss = LossCanvas(self)
        self.scores = QLabel("")
        self.scores.setTextFormat(Qt.RichText)
        self.scores.setWordWrap(True)
        self.scores.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.scores.setToolTip(_score_tooltip(SCORE_HELP))
        self._scores_html = ""  # the last run's scores, kept until a new run finishes
        for widget, key in ((self.task_combo, "task"), (self.holdout_spin, "holdout"),
                            (self.factor_combo, "factor"), (self.maps_check, "maps"),
                            (self.stride_spin, "maps"), (self.epochs_spin, "epochs"),
                            (self.out_edit, "out"), (self.overwrite_check, "overwrite"),
                            (self.out_btn, "out"), (self.start_btn, "start"),
                            (self.cancel_btn, "cancel")):
            widget.setToolTip(SETTING_HELP[key])
        self.loss.setToolTip("Training (blue) and validation (orange) loss per epoch, one curve "
                             "per network the run trains (its folds and ensemble members): the "
                             "validation loss stops falling when the model stops learning.")

        form = QFormLayout()
        form.addRow("Task", self.task_combo)
        form.addRow("Hidden spots", self.holdout_spin)
        form.addRow("Density", self.factor_combo)
        srow = QHBoxLayout()
        srow.addWidget(self.maps_check)
        srow.addWidget(self.stride_spin)
        form.addRow("Maps", srow)
        form.addRow("Learn also from", ReferenceList(napari_viewer, self))
        for name, widget in self.config_form.widgets.items():  # one aligned form
            form.addRow(widget.label, widget.native)
            if name == "extra_genes":
                form.addRow("Training", self.epochs_spin)
        self.advanced = QCollapsible("Advanced settings")
        self.advanced.toggleButton().setToolTip(SETTING_HELP["advanced"])
        self.advanced.addWidget(self.advanced_form.container.native)
        self.advanced.collapse(animate=False)
        orow = QHBoxLayout()
        orow.addWidget(self.out_edit)
        orow.addWidget(self.out_btn)
        oform = QFormLayout()
        oform.addRow("Save to", orow)
        oform.addRow("", self.overwrite_check)
        brow = QHBoxLayout()
        brow.addWidget(self.start_btn)
        brow.addWidget(self.cancel_btn)

        lay = QVBoxLayout(self)
        lay.addWidget(heading("Train and enhance"))
        lay.addLayout(form)
        lay.addWidget(self.advanced)
        lay.addWidget(self.asked_note)
        lay.addLayout(oform)
        lay.addLayout(brow)
        lay.addWidget(self.status)
        lay.addWidget(self.horizon)
        lay.addWidget(self.loss)
        lay.addWidget(hline())
        lay.addWidget(self.scores)
        lay.addWidget(self.save_model_btn)
        lay.addStretch(1)

        self.task_combo.currentIndexChanged.connect(self._update_enabled)
        self.maps_check.toggled.connect(self._update_enabled)
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.out_btn.clicked.connect(self._choose_out)
        self.save_model_btn.clicked.connect(lambda: self.save_model())
        listen(self, self.session.scores_changed, self._on_scores)
        listen(self, self.session.genes_asked, self._on_genes_asked)
        listen(self, self.session.sample_changed, self._on_genes_asked)
        self._update_enabled()

    # -- parameters -----------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.task_combo.currentData()

    def set_task(self, task: str) -> None:
        self.task_combo.setCurrentIndex(self.task_combo.findData(task))

    def _update_enabled(self, *_):
        rec = self.task == "recovery"
        self.holdout_spin.setEnabled(rec)
        self.factor_combo.setEnabled(not rec)
        self.maps_check.setEnabled(not rec)
        self.stride_spin.setEnabled(not rec and self.maps_check.isChecked())
        self.config_form["marker_panel"].enabled = not rec  # recovery scores the variable genes

    def _choose_out(self):
        path = QFileDialog.getExistingDirectory(self, "Folder for the run")
        if path:
            self.out_edit.setText(path)

    def make_config(self):
        """The RunConfig of the current settings (the token is read from the Sample widget
        now and goes into this object only)."""
        from ...tl import RunConfig

        train = {}
        if self.epochs_spin.value() > 0:
            train["max_epochs"] = int(self.epochs_spin.value())
        kwargs = {
            "encoder": self.session.encoder(),
            "device": self.session.device(),
            **self.config_form.values(),
            **self.advanced_form.values(),
            "train": train,
        }
        typed = tuple(kwargs.get("extra_genes") or ())
        kwargs["extra_genes"] = typed + tuple(g for g in self.asked_genes() if g not in typed)
        return RunConfig(hf_token=self.session.token(), **kwargs)

    def asked_genes(self) -> list[str]:
        """The sample's genes the user asked for in the viewer: a run maps them too (added to
        Extra genes), whether or not they are variable."""
        adata = self.session.adata
        if adata is None:
            return []
        names = set(map(str, adata.var_names))
        return [g for g in self.session.asked_genes if g in names]

    def _on_genes_asked(self, *_):
        genes = self.asked_genes()
        self.asked_note.setVisible(bool(genes))
        shown = ", ".join(genes[:8]) + (f" and {len(genes) - 8} more" if len(genes) > 8 else "")
        self.asked_note.setText(f"Also mapped (asked in the viewer): {shown}")

    def task_arguments(self, config) -> dict[str, Any]:
        """The task's own arguments (those that are not RunConfig fields), as
        :func:`napari_trihrge.workflows.runs.run_task` takes them."""
        if self.task == "recovery":
            return {"holdout_fraction": self.holdout_spin.value() / 100.0, "seed": config.seed}
        stride = float(self.stride_spin.value()) if self.maps_check.isChecked() else None
        return {"factor": int(self.factor_combo.currentData()), "stride_um": stride}

    # -- running --------------------------------------------------------------------------
    def start(self):
        """Check the settings, then run the chosen task in a background worker through
        :func:`napari_trihrge.workflows.runs.run_task` (the CLI's path); returns the worker
        (or None)."""
        from ...tl import validate_config
        from ...workflows.runs import run_task

        if self.worker is not None:
            show_info("A run is already in progress")
            return None
        adata = self.session.adata
        if adata is None:
            show_error("Open a sample first (Sample widget, File > Open Sample, or drop a "
                       "Space Ranger folder on the viewer)")
            return None
        try:
            config = self.make_config()
            validate_config(config)  # before any work, on the GUI thread
        except Exception as exc:  # noqa: BLE001 - a notification, never a crash
            notify_error(exc, "Invalid parameters")
            return None
        out_dir = self.out_edit.text().strip() or None
        overwrite = self.overwrite_check.isChecked()
        if out_dir is not None and not self._out_dir_usable(out_dir, overwrite):
            return None
        self.loss.clear()
        self._mark_scores_previous()
        self._run_task, self._run_adata = self.task, adata
        # the maps' factors are computed in the worker, so showing a gene never waits for them
        worker = self.launch(run_task, self.task, adata, out_dir, config=config,
                             overwrite=overwrite, prepare_maps=True,
                             **self.task_arguments(config),
                             reference=self.findChild(ReferenceList).references())
        self._run_config = dataclasses.replace(config, hf_token=None)  # for save_model
        del config  # the token lives on only inside the worker's call
        return worker

    def _out_dir_usable(self, out_dir: str, overwrite: bool) -> bool:
        """Whether the run may be saved in ``out_dir``; if not, say so in the panel's words
        (checked before any work)."""
        from pathlib import Path

        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            problem = f"{out} is a file, not a folder: choose a folder under Save to."
        elif out.is_dir() and any(out.iterdir()) and not overwrite:
            problem = (f"The folder {out} already holds files: tick 'replace what the folder "
                       "holds' under Save to, or choose another folder.")
        else:
            return True
        self.status.setText(f"<span style='color:{WARN_COLOUR}'>{problem}</span>")
        show_error(problem)
        return False

    def _mark_scores_previous(self) -> None:
        """The last scores stay visible, greyed and marked, until a new run finishes."""
        if self._scores_html:
            self.scores.setText("<span style='color:#9e9e9e'><i>Previous run (kept until the "
                                f"new one finishes):</i><br>{self._scores_html}</span>")

    def _on_events(self, events: list[dict]):
        need_redraw = False
        for ev in self.bars.handle(events):
            kind = ev.get("event")
            if kind == "metric" and "train_loss" in ev:
                val = ev.get("val_loss")
                self.loss.add(float(ev.get("epoch", len(self.loss.epochs) + 1)),
                              float(ev["train_loss"]),
                              None if val is None else float(val))
                need_redraw = True
            elif kind == "message":
                self.bars.show_text(str(ev.get("text", "")))
        if need_redraw:
            self.loss.redraw()

    def _show(self, run_result) -> None:
        """The run's layers, through the session (EngineRun calls this when it succeeded)."""
        self.session.set_result(self._run_task, run_result.result, self._run_adata)

    def _report(self, run_result) -> None:
        self._last_run = (self._run_task, self._run_config, run_result.result)
        self.save_model_btn.setEnabled(True)
        where = f" Saved in {run_result.out_dir}." if run_result.out_dir else ""
        self.status.setText(f"Done ({_fmt_timings(run_result.result)}).{where}")

    def save_model(self, path: str | None = None):
        """Write the last run's model as a model folder (asks where when ``path`` is None)."""
        if self._last_run is None:
            return None
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Folder for the model (empty or new)")
            if not path:
                return None
        from ...tl.inference import save_run_model

        task, config, result = self._last_run
        try:
            out = save_run_model(path, result, config, task, overwrite=False)
        except Exception as exc:  # noqa: BLE001 - never crash the viewer
            from ._common import notify_error

            notify_error(exc, "Saving the model")
            return None
        show_info(f"Model saved in {out}")
        return out

    # -- results --------------------------------------------------------------------------
    def _on_scores(self, scores: dict):
        """The last run's scores (session event): recovery scores, or an enhance run's
        held-out summary; an enhance run without one keeps the last recovery's, marked. A
        prediction's scores belong to the Apply panel."""
        if not scores or scores.get("task") == "predict":
            return
        if scores.get("task") == "recovery":
            self._scores_html = recovery_scores_html(scores)
            self.scores.setText(self._scores_html)
        elif scores.get("pcc_mean") is not None:  # scores of the run's internal held-out spots
            self._scores_html = heldout_summary_html(
                scores, "Enhance: held-out check",
                "spots held out of a model trained like the final one")
            self.scores.setText(self._scores_html)
        elif self._scores_html:
            self.scores.setText(f"<i>From the last recovery run:</i><br>{self._scores_html}")
        self.scores.setToolTip(_score_tooltip(SCORE_HELP))


def recovery_scores_html(m: dict) -> str:
    """The recovery scores as a small table, with the fair score keys of
    :func:`napari_trihrge.metrics.spot_scores` (model and kNN on the same genes and spots)."""
    k = m.get("baseline_knn_k")
    knn = f"kNN baseline (no image, k = {k})" if k else "kNN baseline (no image)"
    rows = [("Mean PCC, hidden spots", m.get("pcc_mean"), "{:.3f}"),
            (knn, m.get("baseline_knn_pcc_mean"), "{:.3f}"),
            ("Noise ceiling (best possible mean PCC)", m.get("noise_ceiling_pcc_mean"),
             "{:.3f}"),
            ("Fraction of the ceiling reached", m.get("fraction_of_ceiling"), "{:.0%}"),
            ("Mean PCC, 100 most expressed genes", m.get("pcc_top100"), "{:.3f}"),
            ("kNN, 100 most expressed genes", m.get("baseline_knn_pcc_top100"), "{:.3f}"),
            ("Genes better than kNN", m.get("fraction_genes_better_than_baseline"), "{:.0%}"),
            ("Genes predicted as a constant", m.get("n_genes_constant_prediction"), "{:d}"),
            ("MSE", m.get("mse"), "{:.3f}"), ("MAE", m.get("mae"), "{:.3f}"),
            ("ARI (k-means vs labels)", m.get("ari"), "{:.3f}")]
    html = "<b>Recovery scores</b> ({} hidden spots, {} genes scored)<table>".format(
        m.get("n_hidden", "?"), m.get("n_genes_scored", "?"))
    for name, val, fmt in rows:
        if val is None or (isinstance(val, float) and not math.isfinite(val)):
            continue
        txt = fmt.format(int(val)) if fmt == "{:d}" else fmt.format(float(val))
        html += f"<tr><td>{name}</td><td align='right'>&nbsp;{txt}</td></tr>"
    html += "</table>"
    return html


def heldout_summary_html(m: dict, title: str, where: str) -> str:
    """A run's held-out summary (:func:`napari_trihrge.napari.session.run_scores`): the model
    vs kNN interpolation on the same genes and spots (fair score) and the share of genes that
    beat interpolation; ``where``: which spots were held out."""
    n, beat = m.get("n_genes_scored"), m.get("n_genes_beating_interpolation")
    html = f"<b>{title}</b> ({where}"
    html += f", {m['n_hidden']} spots)" if m.get("n_hidden") else ")"
    html += "<table>"
    rows = [("Mean PCC, model", m.get("pcc_mean")),
            ("Mean PCC, kNN interpolation", m.get("baseline_knn_pcc_mean"))]
    for name, val in rows:
        if val is not None and math.isfinite(float(val)):
            html += f"<tr><td>{name}</td><td align='right'>&nbsp;{float(val):.3f}</td></tr>"
    if n and beat is not None:
        html += (f"<tr><td>Genes that beat interpolation</td><td align='right'>&nbsp;"
                 f"{int(beat)} of {int(n)} ({int(beat) / int(n):.0%})</td></tr>")
    html += "</table>"
    if n and beat is not None and int(beat) < int(n):
        html += (f"<span style='color:{WARN_COLOUR}'>Genes below interpolation are marked "
                 "orange: use the measured spots for them.</span>")
    return html


def _fmt_timings(result) -> str:
    t = getattr(result, "timings_s", {}) or {}
    total = sum(float(v) for v in t.values())
    return f"{total:.1f} s" if total else "finished"
