"""In-place layer updates of a gene switch (napari/_qt/_display.py) in a real viewer: told to
the canvas once, drawn as a layer built for the gene."""

from __future__ import annotations

import numpy as np
import pytest

from qt_support import add_sample, canvas_png, fake_enhance, sample_adata

pytestmark = pytest.mark.gui


def _fired(emitter) -> list:
    """A list that grows by one at each emission of a napari event ``emitter``."""
    fired: list = []
    emitter.connect(lambda event=None: fired.append(event))
    return fired


def test_points_recoloured_once_and_drawn_as_a_layer_built_for_the_gene(viewer, qtbot):
    from napari_trihrge.napari import layers as L
    from napari_trihrge.napari._qt._display import set_points_gene

    _, spots = add_sample(viewer)
    adata = sample_adata()
    gene = "STROMA_4"
    assert spots.metadata["trihrge"]["gene"] != gene
    values = L.gene_expression(adata, [gene])[gene].to_numpy()
    limits = (0.1, 0.8 * float(values.max()))
    face_color, clim = _fired(spots.events.face_color), _fired(spots._face.events.contrast_limits)
    set_points_gene(spots, gene, values, limits)
    assert len(face_color) == 1 and len(clim) == 1  # the points redrawn once, one colour bar
    assert list(spots.features.columns[:2]) == ["barcode", gene]  # hover: the gene first
    np.testing.assert_allclose(spots.face_contrast_limits, limits)
    shown, colours = canvas_png(viewer), spots.face_color.copy()
    # a layer built for the gene on the same scale: the same colours, the same canvas
    viewer.layers.remove(spots)
    data, kwargs, _ = L.spots_layer(adata, [gene], color_by=gene, contrast_limits=limits)
    fresh = viewer.add_points(data, **kwargs)
    np.testing.assert_array_equal(fresh.face_color, colours)
    np.testing.assert_array_equal(canvas_png(viewer), shown)


def test_map_swapped_with_one_contrast_event_and_drawn_as_a_layer_built_for_it(viewer, qtbot):
    from napari_trihrge.napari import layers as L
    from napari_trihrge.napari._qt._display import set_map_gene

    add_sample(viewer)
    maps = fake_enhance().maps
    first, gene = maps.gene_names[0], maps.gene_names[-1]
    data, kwargs, _ = L.map_layers(maps, [first])[0]
    layer = viewer.add_image(data, **kwargs)
    clim, clim_range = _fired(layer.events.contrast_limits), _fired(
        layer.events.contrast_limits_range)
    values = L.map_values(maps, gene)
    limits = L.shared_contrast_limits(values)
    set_map_gene(layer, maps, gene, values, limits)
    assert len(clim) == 1 and len(clim_range) == 1
    shown_data = L.map_display_data(values, limits)
    np.testing.assert_array_equal(layer.data, shown_data)
    np.testing.assert_allclose(layer.contrast_limits, limits)
    np.testing.assert_allclose(layer.contrast_limits_range,
                               (min(shown_data.min(), limits[0]),
                                max(shown_data.max(), limits[1])))
    assert layer.metadata["trihrge"]["gene"] == gene and layer.name == f"enhanced {gene}"
    shown = canvas_png(viewer)
    viewer.layers.remove(layer)
    data, kwargs, _ = L.map_layers(maps, [gene], contrast_limits=limits)[0]
    viewer.add_image(data, **kwargs)
    np.testing.assert_array_equal(canvas_png(viewer), shown)


def test_canvas_label_changes_without_recompiling_its_box_and_draws_the_same(viewer, qtbot,
                                                                              monkeypatch):
    """A new gene's label resizes its box: drawn as before, without a new shader program."""
    from vispy.visuals.mesh import MeshVisual
    from vispy.visuals.shaders import program

    from napari_trihrge.napari._qt._display import keep_box_shaders, show_canvas_label

    vispy_own = getattr(MeshVisual._build_color_transform, "trihrge_original",
                        MeshVisual._build_color_transform)
    monkeypatch.setattr(MeshVisual, "_build_color_transform", vispy_own)  # vispy as shipped
    add_sample(viewer)
    labels = ["EPCAM: log-normalised expression", "a much longer gene name: other units"]
    before = []
    for text in labels:
        show_canvas_label(viewer, text)
        before.append(canvas_png(viewer))
    builds: list = []
    build = program.ModularProgram._build
    monkeypatch.setattr(program.ModularProgram, "_build",
                        lambda self: (builds.append(self), build(self))[1])
    show_canvas_label(viewer, labels[0])
    canvas_png(viewer)
    assert builds  # vispy as shipped: the resized box's program is built again
    keep_box_shaders()
    keep_box_shaders()  # idempotent
    assert MeshVisual._build_color_transform.trihrge_original is vispy_own
    for text, shown in zip([*labels, *labels], [*before, *before], strict=True):
        show_canvas_label(viewer, text)
        np.testing.assert_array_equal(canvas_png(viewer), shown)
    builds.clear()
    for text in labels:
        show_canvas_label(viewer, text)
        canvas_png(viewer)
    assert not builds  # the box resized twice, its program kept
