"""The run settings of the Train widget, generated from :class:`~napari_trihrge.tl.RunConfig`.

Each field listed in :data:`MAIN_FIELDS` / :data:`ADVANCED_FIELDS` becomes the magicgui widget of
its type annotation and default (``magicgui.widgets.create_widget``); its tooltip is the field's
entry in RunConfig's docstring. Only the range, a label and display words are given here.
Fields magicgui cannot render usefully (tuples of window sizes, dicts) are left to the CLI and
the Python API.
"""

from __future__ import annotations

import dataclasses
import typing
from functools import cache
from typing import Any

from magicgui.widgets import Container, Widget, create_widget

from ...pp.markers import MARKER_PANEL_CHOICES, MARKER_PANELS
from ...tl import RunConfig

#: how a field whose value may be None shows that choice in a list ('none' <-> None)
NONE_CHOICE = "none"


def _panel_choices() -> list[tuple[str, str]]:
    shown = {name: f"{name} ({len(genes)} genes)" for name, genes in MARKER_PANELS.items()}
    shown["all"] = f"all ({', '.join(MARKER_PANELS)})"
    return [(shown[name], name) for name in MARKER_PANEL_CHOICES] + [
        ("none (variable genes only)", NONE_CHOICE)]


#: field -> label and magicgui options (ranges, choices); everything else comes from RunConfig
MAIN_FIELDS: dict[str, dict[str, Any]] = {
    "n_top_genes": {"label": "Variable genes", "options": {"min": 5, "max": 20000}},
    "extra_genes": {"label": "Extra genes", "annotation": str,
                    "placeholder": "genes to always include, e.g. ERBB2, MBP"},
    "marker_panel": {"label": "Marker panel", "annotation": str,
                     "options": {"choices": _panel_choices()}},
    "model_preset": {"label": "Model", "options": {"choices": [
        ("auto (compact on CPU, full on GPU)", "auto"),
        ("compact (fast on a laptop CPU)", "compact"),
        ("full (TriHRGE reference widths)", "paper")]}},
    "ensemble": {"label": "Ensemble (models)", "options": {"min": 1, "max": 20}},
    "seed": {"label": "Seed", "options": {"min": 0, "max": 2**31 - 1}},
}
ADVANCED_FIELDS: dict[str, dict[str, Any]] = {
    "image_input": {"label": "H&&E image input"},  # '&&': one '&' in a Qt label
    "neighbour_input": {"label": "Neighbour input"},
    "neighbour_skip": {"label": "Neighbour shortcut"},
    "n_neighbours": {"label": "Neighbours (spots)", "options": {"min": 1, "max": 100}},
    "local_window_um": {"label": "Local window", "options": {"min": 1.0, "max": 1000.0},
                        "suffix": " um"},
    "map_method": {"label": "Map method", "annotation": str, "options": {"choices": [
        ("blend (as recovery)", "blend"),
        ("residual (interpolation + image detail)", "residual")]}},
}


@cache
def field_docs() -> dict[str, str]:
    """RunConfig's field descriptions (the 'Parameters' section of its docstring)."""
    from docstring_parser import parse

    return {p.arg_name: " ".join((p.description or "").split())
            for p in parse(RunConfig.__doc__ or "").params}


def field_widget(name: str, spec: dict[str, Any]) -> Widget:
    """The magicgui widget of RunConfig field ``name`` (its annotation and default)."""
    fld = {f.name: f for f in dataclasses.fields(RunConfig)}[name]
    annotation = spec.get("annotation") or typing.get_type_hints(RunConfig)[name]
    value = fld.default
    if name == "extra_genes":  # typed as a comma-separated line, parsed by values()
        value = ", ".join(value)
    if value is None and "choices" in spec.get("options", {}):
        value = NONE_CHOICE
    widget = create_widget(value=value, annotation=annotation, name=name,
                           label=spec.get("label", name), options=spec.get("options", {}))
    widget.tooltip = field_docs().get(name, "")
    native = widget.native
    if "suffix" in spec:  # QDoubleSpinBox (magicgui's integer box has no suffix)
        native.setSuffix(spec["suffix"])
    if "placeholder" in spec and hasattr(native, "setPlaceholderText"):
        native.setPlaceholderText(spec["placeholder"])
    return widget


class RunConfigForm:
    """magicgui widgets for RunConfig fields (``widgets``, and laid out with their labels in
    ``container``); :meth:`values` gives RunConfig keyword arguments."""

    def __init__(self, fields: dict[str, dict[str, Any]]):
        self.widgets = {name: field_widget(name, spec) for name, spec in fields.items()}
        self._container: Container | None = None

    @property
    def container(self) -> Container:
        """The widgets in a labelled magicgui Container (made on first use)."""
        if self._container is None:
            self._container = Container(widgets=list(self.widgets.values()), labels=True)
            self._container.margins = (0, 0, 0, 0)
        return self._container

    def __getitem__(self, name: str) -> Widget:
        return self.widgets[name]

    def values(self) -> dict[str, Any]:
        """The fields' current values, as RunConfig takes them."""
        out = {name: None if w.value == NONE_CHOICE else w.value
               for name, w in self.widgets.items()}
        if "extra_genes" in out:
            out["extra_genes"] = parse_gene_list(out["extra_genes"])
        return out


def parse_gene_list(text: str) -> tuple[str, ...]:
    """'ERBB2, MBP; CD3E' -> ('ERBB2', 'MBP', 'CD3E')."""
    return tuple(g.strip() for g in str(text).replace(";", ",").split(",") if g.strip())
