"""Fast in-place updates of the TriHRGE layers (recolour spots, swap the map's data)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np

from .. import layers as L

#: gene columns kept in a points layer's features (the hover text lists them all)
MAX_FEATURE_GENES = 12
#: the colour of everything that warns, above all genes whose prediction does not beat
#: interpolation (canvas label, gene lists, region table, panels)
WARN_COLOUR = "#ffb74d"


def set_points_gene(layer, gene: str, values: np.ndarray, limits: tuple[float, float],
                    colormap: str = L.DEFAULT_COLORMAP) -> None:
    """Colour a Points layer by ``gene`` (added to ``features`` when missing); the points are
    redrawn and their colour bar told once."""
    feats = layer.features
    cols = list(feats.columns)
    lead = [c for c in cols[:1] if c == "barcode"]
    with _coalesced_colours(layer):
        if gene not in cols or cols[len(lead)] != gene:
            # hovering shows the barcode then the displayed gene first; keep the few most recent
            feats = feats.copy()
            if gene not in cols:
                feats[gene] = np.asarray(values, dtype=np.float32)
            others = [c for c in cols if c not in lead and c != gene][: MAX_FEATURE_GENES - 1]
            layer.features = feats[lead + [gene] + others]
        layer.face_color = gene
        if layer.face_colormap.name != colormap:
            layer.face_colormap = colormap
        layer.face_contrast_limits = tuple(float(v) for v in limits)
    layer.metadata.setdefault("trihrge", {})["gene"] = gene


@contextmanager
def _coalesced_colours(layer) -> Iterator[None]:
    """A Points layer's colour changes inside the block redraw it once: napari redraws the
    points on each event of the layer's ``face_color`` and of its face colour manager's
    ``colors`` and ``color_properties``; the last two are dropped (``face_color`` redraws),
    the colour bar's (``contrast_limits``, ``continuous_colormap``) come once."""
    face = getattr(layer, "_face", None)  # napari's colour manager of the faces
    if face is None:  # another napari: no coalescing
        yield
        return
    with (coalesced_events(layer.events, "features", "properties", "face_color"),
          coalesced_events(face.events, "contrast_limits", "continuous_colormap"),
          face.events.colors.blocker(), face.events.color_properties.blocker()):
        yield


def _of_sample(layer, kind: str, sample: str | None) -> bool:
    """Whether ``layer`` is of ``kind`` and may show ``sample``'s data (a layer of another
    sample never does; one without a recorded sample may; with no sample open, any)."""
    meta = (layer.metadata or {}).get("trihrge", {})
    return meta.get("kind") == kind and (sample is None or meta.get("sample") in (None, sample))


def ensure_map_layer(viewer, maps, gene: str, limits: tuple[float, float],
                     colormap: str = L.DEFAULT_COLORMAP, sample: str | None = None,
                     pending: bool = False):
    """The one enhanced-map Image layer of ``maps`` (created on first use, reused after) of
    ``sample``; a new layer records ``sample`` (the view places it with its sample).
    ``pending``: a new layer is made without computing the map (:func:`set_map_pending`)."""
    for layer in viewer.layers:
        if _of_sample(layer, "map", sample) and (layer.metadata or {}).get("maps") is maps:
            return layer
    # a map layer of an earlier run of this sample is reused too (data swapped per gene)
    for layer in viewer.layers:
        if _of_sample(layer, "map", sample):
            layer.metadata["maps"] = maps
            layer.scale = (float(maps.stride_um),) * 2
            layer.translate = tuple(float(v) for v in np.asarray(maps.origin_rc_um))
            layer.metadata["trihrge"].pop("offset_rc_um", None)  # placed again by the view
            return layer
    data, kwargs, _ = (L.pending_map_layer(maps, gene) if pending else
                       L.map_layers(maps, [gene], contrast_limits=limits, colormap=colormap)[0])
    kwargs["name"] = L.pending_map_name(gene) if pending else "enhanced map"
    kwargs["metadata"]["trihrge"]["sample"] = sample
    layer = viewer.add_image(data, **kwargs)
    return layer


@contextmanager
def coalesced_events(events, *names: str) -> Iterator[None]:
    """Inside the block, the napari events ``names`` of ``events`` (a layer's ``events``) are
    held back; after it, each that fired is emitted once, so its listeners (the canvas, the
    colour bar, the layer controls) see the final state once instead of every step."""
    emitters = [getattr(events, name) for name in names]
    with ExitStack() as stack:
        blockers = [stack.enter_context(emitter.blocker()) for emitter in emitters]
        yield
    for emitter, blocker in zip(emitters, blockers, strict=True):
        if blocker.count:
            emitter()


#: the events of an Image layer that a new gene's data and contrast limits fire several times
#: (the thumbnail is redrawn in the layer list on each)
_IMAGE_SCALE_EVENTS = ("contrast_limits_range", "contrast_limits", "thumbnail")


def set_image_data(layer, data: np.ndarray, limits: tuple[float, float],
                   limits_range: tuple[float, float]) -> None:
    """Swap an Image layer's data, the range of its contrast slider and its contrast limits
    (within that range); the colour bar and the canvas are told once."""
    with coalesced_events(layer.events, *_IMAGE_SCALE_EVENTS):
        layer.data = data
        # the range first so that the new limits are always accepted
        layer.contrast_limits_range = tuple(float(v) for v in limits_range)
        layer.contrast_limits = tuple(float(v) for v in limits)


def set_map_gene(layer, maps, gene: str, values: np.ndarray,
                 limits: tuple[float, float]) -> None:
    """Swap the map layer's data to ``gene`` (no new layer; a few ms for 1000 x 1000)."""
    data = L.map_display_data(values, limits)
    lo, hi = (float(v) for v in limits)
    # display data hold no NaN (map_display_data): min and max cover the data
    rng = (float(data.min()), float(data.max())) if data.size else (lo, hi)
    set_image_data(layer, data, (lo, hi), (min(rng[0], lo), max(rng[1], hi)))
    meta = layer.metadata.setdefault("trihrge", {})
    meta["gene"] = gene
    meta["display_limits"] = tuple(float(v) for v in limits)
    layer.name = f"enhanced {gene}" + meta.get("name_suffix", "")


def set_map_pending(layer, spread, maps, gene: str) -> None:
    """The map layer (and the ``spread`` layer, or None) wait for ``gene``'s map, computed in
    a worker: transparent, named so; never an earlier gene's map under this gene's name."""
    data, limits = L.pending_map_data(maps)
    for lay, name in ((layer, L.pending_map_name(gene)),
                      (spread, L.spread_layer_name(gene) + " (computing…)")):
        if lay is None:
            continue
        lay.metadata["maps"] = maps
        meta = lay.metadata.setdefault("trihrge", {})
        meta.update(gene=gene, pending=True, display_limits=limits)
        set_image_data(lay, data, limits, limits)
        lay.name = name + meta.get("name_suffix", "")


def show_spread(viewer, maps, gene: str, sample: str | None = None) -> bool:
    """Show ``gene``'s ensemble spread in the one spread layer of ``sample`` (added hidden on
    first use); False when the maps have no spread (a single model). A hidden, unselected
    spread layer is only renamed: its pixels are computed when it is switched on or selected
    (:func:`fill_spread`), the same pixels as if computed now."""
    if getattr(maps, "std", None) is None:
        return False
    layer = next((lay for lay in viewer.layers if _of_sample(lay, "spread", sample)), None)
    if layer is None:
        data, kwargs, _ = L.spread_layer(maps, gene)
        kwargs["metadata"]["trihrge"]["sample"] = sample
        active = viewer.layers.selection.active
        viewer.add_image(data, **kwargs)
        if active is not None:  # the layer controls stay on what is seen, not a hidden layer
            viewer.layers.selection.active = active
        return True
    layer.metadata["maps"] = maps
    meta = layer.metadata["trihrge"]
    meta.update(gene=gene, sample=sample, pending=True)
    layer.name = L.spread_layer_name(gene)
    if layer.visible or layer in viewer.layers.selection:  # seen, or its values read on hover
        fill_spread(layer)
    elif not getattr(layer, "_trihrge_fill_on_show", False):
        layer.events.visible.connect(lambda event=None: fill_spread(layer)
                                     if layer.visible else None)
        layer._trihrge_fill_on_show = True
    return True


def fill_spread(layer) -> bool:
    """Compute the pixels of the gene a spread layer is named after, when they are still
    pending (:func:`show_spread` on a hidden layer); False when nothing was pending."""
    meta = (layer.metadata or {}).get("trihrge", {})
    if not meta.get("pending", False) or meta.get("gene") is None:
        return False
    if not L.map_ready(layer.metadata["maps"], meta["gene"]):
        return False  # the map's worker computes it; it is shown with the map
    meta.pop("pending")
    data, kwargs, _ = L.spread_layer(layer.metadata["maps"], meta["gene"])
    lo, hi = kwargs["contrast_limits"]
    set_image_data(layer, data, (lo, hi), (min(float(np.nanmin(data)), lo), max(hi, 1e-6)))
    meta.update(kwargs["metadata"]["trihrge"])
    return True


def hide_values_outside_tissue(layer) -> None:
    """Hovering a map or spread layer outside the tissue shows no value: the display data hold
    a below-the-scale marker there (drawn transparent), which is not an expression value."""
    if getattr(layer, "_trihrge_hover_guard", False):
        return
    original = layer.get_value

    def get_value(*args, **kwargs):
        value = original(*args, **kwargs)
        limits = (layer.metadata or {}).get("trihrge", {}).get("display_limits")
        if limits is None or value is None:
            return value
        scalar = value[1] if isinstance(value, tuple) and len(value) == 2 else value
        try:
            outside = L.is_outside_tissue(float(scalar), limits)
        except (TypeError, ValueError):
            return value
        if outside:
            return (value[0], None) if isinstance(value, tuple) and len(value) == 2 else None
        return value

    layer.get_value = get_value
    layer._trihrge_hover_guard = True


def canvas_text_overlay(viewer):
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    text = getattr(overlays, "text", None)
    return text if text is not None else viewer.text_overlay


def show_scale_bar(viewer) -> None:
    """The scale bar on, bottom centre (the colour bar is bottom right), in the layers' unit
    (micrometres for every TriHRGE layer)."""
    canvas = getattr(viewer, "canvas", None)
    bar = getattr(getattr(canvas, "overlays", None), "scale_bar", None)
    bar = bar if bar is not None else viewer.scale_bar
    if not bar.visible:
        bar.visible = True
        bar.box = True
        bar.position = "bottom_center"


def show_canvas_label(viewer, text: str, *, warn: bool = False,
                      position: str = "top_left") -> None:
    """The canvas's text overlay (top left): which gene is shown, its units and how sure."""
    from napari.utils.colormaps.standardize_color import transform_color

    overlay = canvas_text_overlay(viewer)
    overlay.text = text
    overlay.visible = bool(text)
    overlay.font_size = 11
    overlay.box = True
    overlay.position = position
    colour = WARN_COLOUR if warn else "white"
    if not np.array_equal(np.asarray(overlay.color), transform_color(colour)[0]):
        overlay.color = colour  # napari redraws the label on every assignment, even the same


def show_colorbar(layers, keep) -> None:
    """Show the colour bar of ``keep`` (an Image's ``colorbar`` or a Points layer's
    ``face_colorbar``) and hide the others', so the canvas carries exactly one."""
    for layer in layers:
        bar = getattr(layer, "colorbar", None) or getattr(layer, "face_colorbar", None)
        if bar is None:
            continue
        on = layer is keep
        if on:
            bar.position = "bottom_right"
        bar.visible = on


def keep_box_shaders() -> None:
    """A canvas overlay's box (the gene label's, the colour bar's) keeps its compiled shader
    program when it is resized.

    vispy's mesh gives every update of its data a new, identical colour function, so each new
    label or colour-bar scale recompiles and links the box's program (on software OpenGL a
    large part of a gene switch's redraw). A plain-coloured mesh now reuses its function; the
    program, its uniforms and so the pixels drawn are the same. Installed only where vispy's
    function for plain colours is its stateless pass-through (checked first: another vispy is
    left alone); idempotent.
    """
    try:
        from vispy.visuals.mesh import MeshVisual
    except ImportError:  # pragma: no cover - another vispy
        return
    original = getattr(MeshVisual, "_build_color_transform", None)
    if original is None or hasattr(original, "trihrge_original"):
        return
    try:  # only where a plain colour's function is vispy's stateless pass-through
        plain = original(None, np.zeros((2, 4), dtype=np.float32))
    except Exception:  # noqa: BLE001 - another vispy: left alone
        return
    if getattr(plain, "code", None) != "vec4 pass(vec4 color) { return color; }":
        return

    def _build_color_transform(self, colors):
        if colors.ndim == 2 and colors.shape[1] == 1:  # values through a colormap: as before
            return original(self, colors)
        plain = self.__dict__.get("_trihrge_plain_colour")
        if plain is None:  # vispy's visuals are frozen: no new attribute by assignment
            plain = original(self, colors)
            object.__setattr__(self, "_trihrge_plain_colour", plain)
        return plain

    _build_color_transform.trihrge_original = original
    MeshVisual._build_color_transform = _build_color_transform


def cell_colormap(cells, gene: str | None, limits=None):
    """The napari label colormap of ``cells`` for ``gene`` (one colour per cell label)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=L.cell_gene_colors(cells, gene, limits))


def recolour_cells(layer, gene: str | None, limits=None) -> bool:
    """Colour a cells layer by ``gene`` (on ``limits``, the shared colour scale); the labels
    stay as they are. False (nothing changed) when the cells have no value for the gene."""
    cells = L.cells_of_layer(layer)
    if cells is None or gene is None or gene not in cells.var_names:
        return False
    layer.colormap = cell_colormap(cells, gene, limits)
    layer.metadata["trihrge"]["gene"] = gene
    return True
