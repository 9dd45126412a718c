"""The factorised map store: maps computed from it equal the direct prediction; bad input."""

import json
import shutil

import numpy as np
import pytest

from conftest import TINY_MODEL, TINY_TRAIN
from napari_trihrge import geometry
from napari_trihrge import tl as tasks
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.io import map_store
from napari_trihrge.tl._maps import predict_maps
from napari_trihrge.tl._shared import _encoder_and_image, sample_geometry
from napari_trihrge.workflows import map_export

STRIDE_UM = 32.0
#: a store on disk has float16 factors by default: its maps within this of the direct ones
DISK_TOL = map_store.FLOAT16_TOLERANCE


def _config(**kw):
    return tasks.RunConfig(n_top_genes=30, model=dict(TINY_MODEL), train=dict(TINY_TRAIN),
                           stacking_folds=3, **kw)


def _direct_maps(adata, result, cfg):
    """Today's maps (every gene predicted at every location) on the same grid and model."""
    image, encoder = _encoder_and_image(adata, cfg)
    rc_um, _, _ = sample_geometry(result.spots)
    maps = result.maps
    grid = geometry.DenseGrid(maps.origin_rc_um, maps.stride_um, maps.mask)
    windows = (float(cfg.local_window_um), *cfg.windows_um)
    model = result.model if result.model is not None else result.fits
    return predict_maps(model, image, encoder, rc_um, np.asarray(result.spots.X), windows,
                        STRIDE_UM, cfg, genes=list(result.spots.var_names), grid=grid)


@pytest.fixture(scope="module")
def blended(_synthetic_cached):
    adata = _synthetic_cached.copy()
    cfg = _config(map_method="blend")
    result = tasks.enhance(adata, factor=2, stride_um=STRIDE_UM, config=cfg, trust=False,
                           map_store=True)
    return adata, cfg, result, _direct_maps(adata, result, cfg)


def test_store_maps_equal_the_direct_prediction_with_the_blend(blended):
    _, _, result, direct = blended
    maps = result.maps
    assert isinstance(maps, map_store.FactorMaps)
    assert maps.weights.candidates == ["knn6", "knn12", "ridge", "network"]
    values = np.asarray(maps.values)
    reference = np.asarray(direct.values)
    assert values.shape == reference.shape
    assert np.array_equal(np.isnan(values), np.isnan(reference))
    inside = maps.mask
    assert np.abs(values[:, inside] - reference[:, inside]).max() < 1e-4
    assert values[:, inside].std() > 0.1  # real maps, not constants
    # the spread over the fold networks (times each gene's network weight) too
    assert maps.std is not None and direct.std is not None
    spread = np.asarray(maps.std)
    assert np.abs(spread[:, inside] - np.asarray(direct.std)[:, inside]).max() < 1e-4
    assert spread[:, inside].max() > 0


def test_region_points_of_store_maps_equal_those_of_the_direct_maps(blended, monkeypatch):
    """The Region explorer's points of factorised maps: every gene computed at the sub-sampled
    pixels only (no whole map), equal to the points of the direct maps."""
    from napari_trihrge import regions as R

    _, _, result, direct = blended
    reference = R.maps_expression_set(direct, max_values=20_000)

    def whole_map(*args, **kwargs):
        raise AssertionError("a whole map was computed")

    monkeypatch.setattr(map_store.FactorMaps, "compute", whole_map)
    points = R.maps_expression_set(result.maps, max_values=20_000)
    assert points.genes == reference.genes
    np.testing.assert_array_equal(points.points_rc_um, reference.points_rc_um)
    assert 0 < len(points.points_rc_um) < int(result.maps.mask.sum())  # sub-sampled
    assert np.abs(points.values - reference.values).max() < 1e-4


def test_store_maps_equal_the_direct_prediction_with_the_detail_transfer(_synthetic_cached,
                                                                        tmp_path):
    adata = _synthetic_cached.copy()
    cfg = _config(map_method="residual")
    result = tasks.enhance(adata, factor=2, stride_um=STRIDE_UM, config=cfg, trust=False,
                           map_store=str(tmp_path / "s.zarr"))
    direct = _direct_maps(adata, result, cfg)
    maps = map_store.open_map_store(tmp_path / "s.zarr")
    assert maps.weights.spots_level is not None
    assert not np.allclose(maps.weights.spots_level, maps.weights.spots_expression)
    values = np.asarray(maps.values)
    inside = maps.mask
    assert np.abs(values[:, inside] - np.asarray(direct.values)[:, inside]).max() < DISK_TOL
    assert values[:, inside].std() > 0.1
    spread = np.asarray(maps.std)
    assert np.abs(spread[:, inside] - np.asarray(direct.std)[:, inside]).max() < DISK_TOL


def test_one_gene_on_demand(blended):
    _, _, result, direct = blended
    maps = result.maps
    gene = maps.gene_names[5]
    one = maps[gene]
    assert one.shape == maps.mask.shape
    np.testing.assert_allclose(one, np.asarray(direct.values[5]), atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(maps.sel(gene=gene), one)
    np.testing.assert_array_equal(maps.values[5], one)
    # several genes at once: one matrix product, the same values to float rounding
    np.testing.assert_allclose(maps.sel(gene=[maps.gene_names[0], gene])[1], one, atol=1e-5,
                               equal_nan=True)
    lazy = maps.to_dask()
    assert lazy.shape == maps.shape and lazy.chunksize[0] == 1
    np.testing.assert_array_equal(lazy[5].compute(), one)
    np.testing.assert_array_equal(np.asarray(maps.values[5, 3:7, 2]), one[3:7, 2])


def test_values_at_some_pixels_and_the_consistency_score(blended):
    from napari_trihrge.tl._maps import map_spot_consistency

    adata, _, result, direct = blended
    maps = result.maps
    rng = np.random.default_rng(0)
    rows = rng.integers(0, maps.mask.shape[0], (7, 5))
    cols = rng.integers(0, maps.mask.shape[1], (7, 5))
    at = maps.values_at([4, 1], rows, cols)
    reference = np.asarray(direct.values)[[4, 1]][:, rows, cols]
    assert at.shape == (2, 7, 5)
    np.testing.assert_allclose(at, reference, atol=1e-4, equal_nan=True)
    rc_um, _, diameter_um = sample_geometry(result.spots)
    y = np.asarray(result.spots.X)
    assert map_spot_consistency(maps, rc_um, y, diameter_um) == pytest.approx(
        map_spot_consistency(direct, rc_um, y, diameter_um), abs=1e-5)


def test_overview_panels_of_a_factorised_map_are_every_nth_pixel(blended):
    """The run overview draws a map with more pixels than its panel from every n-th pixel
    (what nearest-neighbour drawing shows), computing only those of a factorised map."""
    from napari_trihrge.pl import PANEL_PX, _panel_maps

    _, _, result, direct = blended
    maps = result.maps
    genes = maps.gene_names[:2]
    panels, step = _panel_maps(maps, genes, 2 * PANEL_PX * maps.stride_um)
    assert step == 2
    for g, panel in enumerate(panels):
        np.testing.assert_allclose(panel, np.asarray(direct.values[g])[::2, ::2], atol=1e-4,
                                   equal_nan=True)
    panels, step = _panel_maps(maps, genes, PANEL_PX * maps.stride_um)
    assert step == 1 and panels[1].shape == maps.mask.shape
    # a little wider than the panel: every second pixel, never more pixels than the panel has
    panels, step = _panel_maps(maps, genes, 1.2 * PANEL_PX * maps.stride_um)
    assert step == 2


def test_warm_computes_every_chunk_once_and_changes_no_map(blended, tmp_path):
    """What the viewer's run does before showing a gene: every chunk's factors computed into
    the cache (as far as it allows), the maps the same as without."""
    from napari_trihrge.progress import Progress

    _, _, result, direct = blended
    path = tmp_path / map_store.STORE_NAME
    map_store.write_map_store(result.maps, path)
    opened = map_store.open_map_store(path)
    opened.chunk_locations = max(1, opened.n_locations // 3)  # several chunks
    calls = []
    expand = opened._expand
    opened._expand = lambda inputs: calls.append(len(inputs)) or expand(inputs)
    progress = Progress()
    assert opened.warm(progress=progress) == opened.n_chunks >= 3
    assert sum(calls) == opened.n_locations  # each location's networks ran once
    np.testing.assert_allclose(np.asarray(opened.values), np.asarray(direct.values),
                               atol=DISK_TOL, equal_nan=True)
    assert sum(calls) == opened.n_locations  # and not again for the maps
    chunk_bytes = sum(a.nbytes for a in opened.location_chunk(0).arrays().values())
    two = map_store.open_map_store(path)
    two.chunk_locations = opened.chunk_locations
    two.cache_bytes = int(2.5 * chunk_bytes)  # room for two chunks: no third pushes one out
    assert two.warm() == 2 and list(two._cache) == [0, 1]
    full = map_store.open_map_store(path)
    full.cache_bytes = 1  # nothing fits: warming stops at the first chunk
    assert full.warm() == 0
    # room for every chunk, the last one smaller than the others: all kept
    tight = map_store.open_map_store(path)
    tight.chunk_locations = opened.chunk_locations
    last = tight._chunk_size(tight.n_chunks - 1)
    assert last < tight.chunk_locations
    tight.cache_bytes = int(chunk_bytes * (tight.n_chunks - 1 + last / tight.chunk_locations)
                            * 1.001)
    assert tight.warm() == tight.n_chunks and tight.ready()


def test_maps_for_a_viewer_compute_whole_chunks_once(blended, tmp_path, monkeypatch):
    """Maps made for a viewer (what the Train panel's run makes): a map at some pixels (the
    consistency check, the overview) computes the chunks it touches whole and keeps them, so
    that every location's networks run once; their cache is a share of the free memory."""
    from napari_trihrge.tl import _maps

    _, _, result, direct = blended
    path = map_store.write_map_store(result.maps, tmp_path / map_store.STORE_NAME).path
    plain = map_store.open_map_store(path)
    with map_store.for_display(3 * 2**30):
        shown = map_store.open_map_store(path)
    assert not plain.whole_chunks and plain.cache_bytes == map_store.FACTOR_CACHE_BYTES
    assert shown.whole_chunks and shown.cache_bytes == 3 * 2**30
    with map_store.for_display(1):  # never below the default
        assert map_store.open_map_store(path).cache_bytes == map_store.FACTOR_CACHE_BYTES
    for maps in (plain, shown):
        maps.chunk_locations = -(-maps.n_locations // 3)  # three chunks
        maps.ran = []
        maps._expand = (lambda m, expand: lambda inputs: m.ran.append(len(inputs))
                        or expand(inputs))(maps, maps._expand)
    rows, cols = np.nonzero(plain.mask)
    pick = slice(0, None, 7)  # some pixels of every chunk
    for maps in (plain, shown):
        np.testing.assert_allclose(maps.values_at([0, 2], rows[pick], cols[pick]),
                                   np.asarray(direct.values)[[0, 2]][:, rows[pick], cols[pick]],
                                   atol=DISK_TOL)
    assert sum(plain.ran) == len(rows[pick]) and not plain.ready()  # those pixels alone
    assert sum(shown.ran) == shown.n_locations and shown.ready()  # every location, kept
    shown.warm()
    np.testing.assert_allclose(np.asarray(shown.values), np.asarray(direct.values),
                               atol=DISK_TOL, equal_nan=True)
    assert sum(shown.ran) == shown.n_locations  # nothing ran again
    # the viewer's cache: half the free memory, at least the default
    monkeypatch.setattr(_maps, "_available_memory_bytes", lambda: 16e9)
    assert _maps.display_cache_bytes() == 8 * 10**9
    monkeypatch.setattr(_maps, "_available_memory_bytes", lambda: None)
    assert _maps.display_cache_bytes() == map_store.FACTOR_CACHE_BYTES


def test_maps_moved_with_their_run_folder_keep_what_they_computed(blended, tmp_path):
    """A run folder swapped into place: its maps point at the moved store and keep their
    factors; a different store there is opened anew."""
    _, _, result, _ = blended
    first = tmp_path / "partial" / map_store.STORE_NAME
    maps = map_store.write_map_store(result.maps, first)
    maps.warm()
    assert maps.ready()
    final = tmp_path / "run" / map_store.STORE_NAME
    final.parent.mkdir()
    first.rename(final)
    moved = maps.moved_to(final)
    assert moved is maps and maps.path == final and maps.ready()
    np.testing.assert_array_equal(maps[maps.gene_names[1]],
                                  map_store.open_map_store(final)[maps.gene_names[1]])
    other = map_store.write_map_store(result.maps, tmp_path / "other.zarr", overwrite=True,
                                      factor_dtype=np.float32)  # another store
    assert maps.moved_to(other.path) is not maps
    shutil.rmtree(final)
    with pytest.raises(TrihrgeInputError, match="not found"):
        maps.moved_to(final)


def test_store_on_disk_round_trip_and_export(blended, tmp_path):
    _, _, result, direct = blended
    path = tmp_path / map_store.STORE_NAME
    opened = map_store.write_map_store(result.maps, path)
    assert opened.path == path and map_store.is_map_store(path)
    reopened = map_store.open_map_store(path)
    np.testing.assert_allclose(np.asarray(reopened.values), np.asarray(direct.values),
                               atol=DISK_TOL, equal_nan=True)
    # a store written from a store: the same inputs and networks, the same maps
    again = map_store.write_map_store(reopened, tmp_path / "again.zarr")
    assert again.factor_model is not None and len(again.factor_model.networks) == 3
    np.testing.assert_allclose(np.asarray(again.values), np.asarray(direct.values),
                               atol=DISK_TOL, equal_nan=True)
    out = tmp_path / "export" / "maps.ome.zarr"
    genes = reopened.gene_names[:3]
    written = map_store.materialise_ome_zarr(reopened, out, genes=genes)
    assert [p.name for p in written] == ["maps.ome.zarr", "maps_std.ome.zarr"]
    from napari_trihrge.io import read_map

    arr, um, names, origin = read_map(out, with_origin=True)
    assert names == genes and um == pytest.approx(STRIDE_UM)
    import zarr

    n_rows, n_cols = reopened.mask.shape
    assert zarr.open_group(str(out), mode="r")["0"].chunks == (
        3, min(128, n_rows), min(128, n_cols))  # MATERIALISED_CHUNKS, capped at the shape
    np.testing.assert_allclose(origin, reopened.origin_rc_um)
    np.testing.assert_allclose(np.asarray(arr), np.asarray(direct.values[:3]), atol=DISK_TOL,
                               equal_nan=True)
    # an existing export is refused without overwrite, and left as it was
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(TrihrgeInputError, match="exists"):
        map_store.materialise_ome_zarr(reopened, out, genes=genes[:1])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    map_store.materialise_ome_zarr(reopened, out, genes=genes[:1], overwrite=True)
    assert read_map(out)[2] == genes[:1]


def test_materialised_in_bands_and_gene_blocks_equals_the_maps(blended, tmp_path,
                                                               monkeypatch):
    """Materialising in several bands of rows, gene blocks and location chunks (each chunk
    computed once for every gene) gives the maps and spread of ``FactorMaps.compute``, and
    the pyramid averaged in memory; float16 (opt-in) is within the documented tolerance."""
    from napari_trihrge.io import read_map_levels

    _, _, result, _ = blended
    monkeypatch.setattr(map_store, "LOCATION_CHUNK", 50)
    path = map_store.write_map_store(result.maps, tmp_path / map_store.STORE_NAME).path
    opened = map_store.open_map_store(path)
    assert opened.n_chunks > 3
    expanded = []
    monkeypatch.setattr(opened, "_expand", lambda inputs, f=opened._expand: (
        expanded.append(len(inputs)), f(inputs))[1])
    monkeypatch.setattr(map_store, "MATERIALISED_CHUNKS", (4, 8, 8))
    monkeypatch.setattr(map_store, "MATERIALISE_BLOCK_BYTES", 1)  # one chunk of genes a block
    genes = opened.gene_names[:10]
    out = tmp_path / "maps.ome.zarr"
    map_store.materialise_ome_zarr(opened, out, genes=genes)
    # every location chunk computed once, without the cache (memory: a band's chunks)
    assert sum(expanded) == opened.n_locations and not opened._cache
    values, std = opened.compute(range(10), with_std=True)
    levels = read_map_levels(out)
    assert len(levels) > 1 and levels[0][0].chunksize == (4, 8, 8)
    np.testing.assert_allclose(np.asarray(levels[0][0]), values, atol=1e-5, equal_nan=True)
    spread = read_map_levels(tmp_path / "maps_std.ome.zarr")
    np.testing.assert_allclose(np.asarray(spread[0][0]), std, atol=1e-5, equal_nan=True)
    rows, cols = (s // 2 for s in values.shape[1:])
    blocks = values[:, :2 * rows, :2 * cols].reshape(10, rows, 2, cols, 2)
    with pytest.warns(RuntimeWarning):
        expected = np.nanmean(blocks, axis=(2, 4))
    np.testing.assert_allclose(np.asarray(levels[1][0]), expected, atol=1e-5, equal_nan=True)
    # float16, on request: rounded to 11 significant bits, so within the tolerance below 4
    # (log-normalised units) and within 2**-11 of the value above
    half = tmp_path / "half.ome.zarr"
    map_store.materialise_ome_zarr(opened, half, genes=genes, dtype=np.float16)
    stored = np.asarray(read_map_levels(half)[0][0])
    assert stored.dtype == np.float16 and np.nanmax(values) > 4  # both ranges are tested
    error = np.abs(stored.astype(np.float32) - values)
    assert np.array_equal(np.isnan(error), np.isnan(values))
    low = values < 4
    assert np.nanmax(error[low]) <= map_store.FLOAT16_TOLERANCE
    assert np.all(error[~low & ~np.isnan(values)] <= 2.0**-11 * values[values >= 4])
    with pytest.raises(TrihrgeInputError, match="float64"):
        map_store.materialise_ome_zarr(opened, tmp_path / "x.ome.zarr", dtype=np.float64)
    assert not list(tmp_path.glob("x*"))


def test_store_is_read_chunk_by_chunk_within_its_cache(blended, tmp_path, monkeypatch):
    """A store's factors are read in location chunks when a map needs them, kept only up to
    the cache budget; the maps equal the direct ones whatever the chunking."""
    _, _, result, direct = blended
    monkeypatch.setattr(map_store, "LOCATION_CHUNK", 64)
    path = map_store.write_map_store(result.maps, tmp_path / map_store.STORE_NAME).path
    opened = map_store.open_map_store(path)
    assert opened.chunk_locations == 64 and opened.n_chunks == -(-opened.n_locations // 64)
    reads = []
    real = map_store._read_factors
    monkeypatch.setattr(map_store, "_read_factors",
                        lambda *a: reads.append(a[2]) or real(*a))
    # a few pixels read only the chunks holding them
    rows, cols = np.nonzero(opened.mask)
    at = opened.values_at([2], rows[:3], cols[:3])
    np.testing.assert_allclose(at[0], np.asarray(direct.values[2])[rows[:3], cols[:3]],
                               atol=DISK_TOL)
    assert reads == [0]
    # a whole gene reads every chunk once (a few pixels' factors are computed for them alone
    # and not kept); a second gene none (all within the cache)
    np.testing.assert_allclose(opened[opened.gene_names[2]], np.asarray(direct.values[2]),
                               atol=DISK_TOL, equal_nan=True)
    assert reads == [0, *range(0, opened.n_chunks * 64, 64)]
    reads.clear()
    opened.gene(opened.gene_names[3])
    assert reads == []
    # a cache of one chunk: memory stays at one chunk, each map reads the store again
    small = map_store.open_map_store(path)
    one_chunk = sum(a.nbytes for a in small.location_chunk(0).arrays().values())
    small.cache_bytes = one_chunk
    reads.clear()
    for g in (1, 2):
        np.testing.assert_allclose(np.asarray(small.values[g]), np.asarray(direct.values[g]),
                                   atol=DISK_TOL, equal_nan=True)
    assert len(reads) == 2 * small.n_chunks - 1 and small._cached_bytes <= one_chunk
    # a gene's spread after its map (the viewer's spread layer) comes from the same pass
    reads.clear()
    spread = small.gene_std(small.gene_names[1])
    np.testing.assert_allclose(spread, np.asarray(direct.std[1]), atol=DISK_TOL, equal_nan=True)
    assert reads == []


def test_store_on_disk_has_float16_factors_within_the_documented_tolerance(blended, tmp_path):
    """float16 image features by default: maps and spread within FLOAT16_TOLERANCE of the
    direct prediction, far under the spread between the fold networks; float32 when asked:
    exact to float rounding."""
    _, _, result, direct = blended
    inside = result.maps.mask
    half = map_store.write_map_store(result.maps, tmp_path / "half.zarr")
    assert half._group.attrs["factor_dtype"] == "float16"
    assert half._group.attrs["version"] == 3 == map_store.STORE_VERSION
    assert half._group["locations/image_features"].dtype == np.float16
    assert "network_hidden" not in half._group["locations"]  # computed when asked
    err = np.abs(np.asarray(half.values)[:, inside] - np.asarray(direct.values)[:, inside])
    assert 0 < err.max() < map_store.FLOAT16_TOLERANCE
    spread = np.asarray(direct.std)[:, inside]
    err_std = np.abs(np.asarray(half.std)[:, inside] - spread)
    assert err_std.max() < map_store.FLOAT16_TOLERANCE
    assert err.max() < 0.1 * np.median(spread[spread > 0])
    full = map_store.write_map_store(result.maps, tmp_path / "full.zarr",
                                     factor_dtype=np.float32)
    assert np.abs(np.asarray(full.values)[:, inside]
                  - np.asarray(direct.values)[:, inside]).max() < 1e-4
    # float16 halves the dense inputs (the compressed bytes of the image features)
    def feature_bytes(path):
        return sum(f.stat().st_size for f in (path / "locations" / "image_features").rglob("*")
                   if f.is_file())
    assert feature_bytes(half.path) < 0.6 * feature_bytes(full.path)


def test_unknown_gene_lists_near_names(blended):
    maps = blended[2].maps
    gene = maps.gene_names[0]
    with pytest.raises(TrihrgeInputError, match="not in the model") as info:
        maps[gene + "X"]
    assert gene in info.value.args[1] if len(info.value.args) > 1 else gene in str(info.value)
    with pytest.raises(TrihrgeInputError, match="not in the model"):
        map_store.resolve_genes(maps, [gene, "NO_SUCH_GENE"])


def _write(maps, path):
    return map_store.write_map_store(maps, path)


def test_store_of_another_version_is_refused(blended, tmp_path):
    path = tmp_path / "s.zarr"
    _write(blended[2].maps, path)
    attrs = json.loads((path / ".zattrs").read_text())
    for version, words in ((map_store.STORE_VERSION + 1, "update napari-trihrge"),
                           (0, "older format version 0")):
        (path / ".zattrs").write_text(json.dumps({**attrs, "version": version}))
        with pytest.raises(TrihrgeInputError, match="version") as info:
            map_store.open_map_store(path)
        assert words in str(info.value)
    # stores of format versions 1 (float32 factors by default) and 2 (float16), which hold
    # the factors themselves, are still read
    maps = blended[2].maps
    factors = map_store.FactorMaps(maps.weights, maps.factors, maps.mask, maps.stride_um,
                                   maps.origin_rc_um)
    old = map_store.write_map_store(factors, tmp_path / "v1.zarr", factor_dtype=np.float32)
    assert old._group.attrs["version"] == 2 and old.factor_model is None
    attrs = json.loads((old.path / ".zattrs").read_text())
    (old.path / ".zattrs").write_text(json.dumps({**attrs, "version": 1}))
    np.testing.assert_allclose(map_store.open_map_store(old.path)[old.gene_names[1]],
                               np.asarray(blended[3].values[1]), atol=1e-4, equal_nan=True)
    two = map_store.write_map_store(factors, tmp_path / "v2.zarr")
    assert two._group["locations/network_hidden"].dtype == np.float16
    inside = maps.mask
    assert np.abs(np.asarray(two.values)[:, inside]
                  - np.asarray(blended[3].values)[:, inside]).max() < DISK_TOL


def test_truncated_store_is_refused(blended, tmp_path):
    path = tmp_path / "s.zarr"
    _write(blended[2].maps, path)
    chunk = next(p for p in sorted((path / "locations" / "image_features").rglob("*"))
                 if p.is_file() and not p.name.startswith("."))
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(TrihrgeInputError, match="incomplete"):
        map_store.open_map_store(path)
    chunk.unlink()
    with pytest.raises(TrihrgeInputError, match="missing"):
        map_store.open_map_store(path)
    # cut short after it was opened: refused on the first map asked for, not shown with holes
    opened = _write(blended[2].maps, tmp_path / "t.zarr")
    next(p for p in sorted((tmp_path / "t.zarr" / "locations").rglob("*"))
         if p.is_file() and not p.name.startswith(".")).unlink()
    with pytest.raises(TrihrgeInputError, match="incomplete"):
        opened[opened.gene_names[0]]
    (path / ".zattrs").unlink()  # an interrupted write: no attributes at all
    with pytest.raises(TrihrgeInputError, match="not a finished map store"):
        map_store.open_map_store(path)


def test_store_with_damaged_networks_is_refused(blended, tmp_path):
    """Format 3 computes the factors with the networks in the store: a network's weights
    missing, cut short or not matching its configuration refuse the store when opened."""
    path = tmp_path / "s.zarr"
    _write(blended[2].maps, path)
    weights = path / "inputs" / "network1" / "0"
    good = weights.read_bytes()
    weights.write_bytes(good[:20])
    with pytest.raises(TrihrgeInputError, match="incomplete"):
        map_store.open_map_store(path)
    weights.unlink()
    with pytest.raises(TrihrgeInputError, match="missing"):
        map_store.open_map_store(path)
    weights.write_bytes(good)
    # a configuration that does not match the weights (same file sizes: not seen by the list)
    inputs = json.loads((path / "inputs" / ".zattrs").read_text())
    inputs["networks"][1]["hidden_dim"] = 2 * inputs["networks"][1]["hidden_dim"]
    text = json.dumps(inputs)
    attrs = json.loads((path / ".zattrs").read_text())
    attrs["files"]["inputs/.zattrs"] = len(text.encode())
    (path / "inputs" / ".zattrs").write_text(text)
    (path / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(TrihrgeInputError, match="damaged"):
        map_store.open_map_store(path)
    # a format 3 store without its networks
    shutil.rmtree(path / "inputs")
    attrs["files"] = {k: v for k, v in attrs["files"].items() if not k.startswith("inputs/")}
    (path / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(TrihrgeInputError, match="damaged"):
        map_store.open_map_store(path)


def test_existing_store_is_not_replaced(blended, tmp_path):
    path = tmp_path / "s.zarr"
    path.mkdir()
    (path / "keep.txt").write_text("mine")
    with pytest.raises(TrihrgeInputError, match="exists"):
        _write(blended[2].maps, path)
    assert (path / "keep.txt").read_text() == "mine"


def test_networks_alone_equal_the_direct_prediction(_synthetic_cached):
    adata = _synthetic_cached.copy()
    cfg = _config(stacking=(), ensemble=2)
    result = tasks.enhance(adata, factor=2, stride_um=STRIDE_UM, config=cfg, trust=False,
                           map_store=True)
    direct = _direct_maps(adata, result, cfg)
    maps = result.maps
    assert maps.weights.blend_weights is None and maps.std is not None
    inside = maps.mask
    assert np.abs(np.asarray(maps.values)[:, inside]
                  - np.asarray(direct.values)[:, inside]).max() < 1e-4
    assert np.abs(np.asarray(maps.std)[:, inside]
                  - np.asarray(direct.std)[:, inside]).max() < 1e-4


@pytest.fixture(scope="module")
def store_run(_synthetic_cached, tmp_path_factory):
    from napari_trihrge.workflows.runs import run_enhance

    out = tmp_path_factory.mktemp("runs") / "run"
    run_enhance(_synthetic_cached.copy(), out, factor=2, stride_um=STRIDE_UM,
                config=_config(), trust=False, map_store=True)
    return out


def test_enhance_run_writes_the_store_and_export_maps_materialises_it(store_run, tmp_path):
    from napari_trihrge.io import read_map
    from napari_trihrge.io.outputs import read_run
    from napari_trihrge.napari._reader import read_run_layers

    assert (store_run / map_store.STORE_NAME).is_dir()
    assert not (store_run / "maps.ome.zarr").exists()
    run = read_run(store_run)
    maps = run["maps_store"]
    summary_maps = run["summary"]["enhance"]
    assert summary_maps["map_locations"] == int(maps.mask.sum())
    layers = read_run_layers(str(store_run))
    map_layer = next(t for t in layers
                     if t[1].get("metadata", {}).get("trihrge", {}).get("kind") == "map")
    assert map_layer[0].shape == maps.mask.shape
    gene = maps.gene_names[2]
    out = tmp_path / "export.ome.zarr"
    written = map_export.export_maps(store_run, out, genes=[gene])
    assert written[0] == out and read_map(out)[2] == [gene]
    np.testing.assert_array_equal(np.asarray(read_map(out)[0][0]), maps[gene])
    with pytest.raises(TrihrgeInputError, match="near names"):
        map_export.export_maps(store_run, tmp_path / "other.ome.zarr", genes=[gene + "x"])
    assert not (tmp_path / "other.ome.zarr").exists()
    with pytest.raises(TrihrgeInputError, match="format"):
        map_export.export_maps(store_run, tmp_path / "x", fmt="tiff")


def test_a_store_too_large_for_the_viewer_opens_at_every_nth_pixel(store_run, monkeypatch):
    import napari.utils.notifications

    from napari_trihrge.napari._reader import read_run_layers

    maps = map_store.open_map_store(store_run / map_store.STORE_NAME)
    told = []
    monkeypatch.setattr(napari.utils.notifications, "show_info", told.append)
    monkeypatch.setattr(map_store, "DISPLAY_LOCATIONS", maps.n_locations // 5)  # 1 px in 3
    layers = read_run_layers(str(store_run))
    data, kw, _ = next(t for t in layers if t[1]["metadata"]["trihrge"].get("kind") == "map")
    shown = kw["metadata"]["maps"]
    assert shown.stride_um == 3 * maps.stride_um and kw["scale"] == (shown.stride_um,) * 2
    assert tuple(kw["translate"]) == tuple(maps.origin_rc_um)
    assert data.shape[:2] == maps.mask[::3, ::3].shape
    gene = kw["metadata"]["trihrge"]["gene"]
    np.testing.assert_allclose(shown[gene], maps[gene][::3, ::3], rtol=0, atol=1e-5)
    assert len(told) == 1 and "one pixel in 3" in told[0] and "--window-um" in told[0]
    monkeypatch.setattr(map_store, "DISPLAY_LOCATIONS", maps.n_locations)  # fits: shown whole
    layers = read_run_layers(str(store_run))
    kw = next(t[1] for t in layers if t[1]["metadata"]["trihrge"].get("kind") == "map")
    assert kw["scale"] == (maps.stride_um,) * 2 and len(told) == 1


def test_truncated_store_in_a_run_shows_nothing(store_run, tmp_path):
    import shutil

    from napari_trihrge.napari._reader import _get_reader

    copy = tmp_path / "run"
    shutil.copytree(store_run, copy)
    chunk = next(p for p in sorted((copy / map_store.STORE_NAME / "locations").rglob("*"))
                 if p.is_file() and not p.name.startswith("."))
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
    reader = _get_reader(str(copy))
    with pytest.raises(TrihrgeInputError, match="incomplete"):
        reader(str(copy))
    store_reader = _get_reader(str(copy / map_store.STORE_NAME))
    with pytest.raises(TrihrgeInputError, match="incomplete"):
        store_reader(str(copy / map_store.STORE_NAME))


def test_export_maps_command(store_run, tmp_path, capsys):
    from napari_trihrge.io import read_map
    from napari_trihrge.workflows import cli

    maps = map_store.open_map_store(store_run / map_store.STORE_NAME)
    genes = maps.gene_names[:2]
    out = tmp_path / "sel.ome.zarr"
    assert cli.main(["export-maps", str(store_run), "--genes", *genes, "--out", str(out),
                     "--quiet"]) == 0
    assert read_map(out)[2] == genes
    assert (tmp_path / "sel_std.ome.zarr").is_dir()
    before = sorted((p.as_posix(), p.stat().st_mtime_ns) for p in out.rglob("*"))
    assert cli.main(["export-maps", str(store_run), "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted((p.as_posix(), p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    assert cli.main(["export-maps", str(store_run), "--genes", genes[0].lower() + "z",
                     "--out", str(tmp_path / "x.ome.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not in the model" in err and genes[0] in err
    assert not (tmp_path / "x.ome.zarr").exists()


def _middle_window_um(maps, rows=(0.3, 0.7), cols=(0.25, 0.6)):
    """A rectangle over the middle of the map, in um (its edges between pixel centres)."""
    n_rows, n_cols = maps.mask.shape
    r = maps.origin_rc_um[0] + (np.array(rows) * n_rows - 0.5) * maps.stride_um
    c = maps.origin_rc_um[1] + (np.array(cols) * n_cols - 0.5) * maps.stride_um
    return tuple(r), tuple(c)


def test_window_maps_equal_the_whole_maps_there(blended):
    _, _, result, _ = blended
    maps = result.maps
    rows_um, cols_um = _middle_window_um(maps)
    part = maps.window(rows_um, cols_um)
    i0 = int(round((part.origin_rc_um[0] - maps.origin_rc_um[0]) / maps.stride_um))
    j0 = int(round((part.origin_rc_um[1] - maps.origin_rc_um[1]) / maps.stride_um))
    h, w = part.mask.shape
    # the pixels whose centres lie inside the rectangle, at their place
    centres_r = maps.origin_rc_um[0] + np.arange(maps.mask.shape[0]) * maps.stride_um
    centres_c = maps.origin_rc_um[1] + np.arange(maps.mask.shape[1]) * maps.stride_um
    in_r = np.flatnonzero((centres_r >= rows_um[0]) & (centres_r <= rows_um[1]))
    in_c = np.flatnonzero((centres_c >= cols_um[0]) & (centres_c <= cols_um[1]))
    assert (i0, i0 + h, j0, j0 + w) == (in_r[0], in_r[-1] + 1, in_c[0], in_c[-1] + 1)
    assert 0 < part.n_locations < maps.n_locations
    np.testing.assert_array_equal(part.mask, maps.mask[i0:i0 + h, j0:j0 + w])
    genes = [0, 3, len(maps.gene_names) - 1]
    whole, whole_sd = maps.compute(genes, with_std=True)
    mine, mine_sd = part.compute(genes, with_std=True)
    np.testing.assert_allclose(mine, whole[:, i0:i0 + h, j0:j0 + w], rtol=0, atol=1e-5)
    np.testing.assert_allclose(mine_sd, whole_sd[:, i0:i0 + h, j0:j0 + w], rtol=0, atol=1e-5)
    assert np.nanstd(mine) > 0.05  # real maps, not constants
    gene = maps.gene_names[3]
    np.testing.assert_allclose(part[gene], maps[gene][i0:i0 + h, j0:j0 + w], atol=1e-5)


@pytest.mark.parametrize("step", [2, 3])
def test_every_nth_pixel_equals_the_whole_maps_there(store_run, step):
    maps = map_store.open_map_store(store_run / map_store.STORE_NAME)
    coarse = maps.every(step)
    assert coarse.stride_um == step * maps.stride_um
    np.testing.assert_array_equal(coarse.origin_rc_um, maps.origin_rc_um)
    np.testing.assert_array_equal(coarse.mask, maps.mask[::step, ::step])
    assert coarse.n_locations == int(maps.mask[::step, ::step].sum())
    genes = [1, 4]
    whole, whole_sd = maps.compute(genes, with_std=True)
    mine, mine_sd = coarse.compute(genes, with_std=True)
    np.testing.assert_allclose(mine, whole[:, ::step, ::step], rtol=0, atol=1e-5)
    np.testing.assert_allclose(mine_sd, whole_sd[:, ::step, ::step], rtol=0, atol=1e-5)
    assert maps.every(1) is maps
    with pytest.raises(TrihrgeInputError, match="positive"):
        maps.every(0)


def test_factor_bytes_per_location_is_what_the_cache_counts(store_run, blended):
    for maps in (map_store.open_map_store(store_run / map_store.STORE_NAME), blended[2].maps):
        chunk = maps.location_chunk(0, keep=False)
        counted = sum(a.nbytes for a in chunk.arrays().values()) / len(chunk)
        assert maps.factor_bytes_per_location() == counted


def test_window_outside_the_tissue_or_reversed_is_refused(blended):
    maps = blended[2].maps
    far = maps.origin_rc_um + 10 * np.array(maps.mask.shape) * maps.stride_um
    with pytest.raises(TrihrgeInputError, match="holds no map location") as err:
        maps.window((far[0], far[0] + 100), (far[1], far[1] + 100))
    assert "the map spans rows" in str(err.value)
    with pytest.raises(TrihrgeInputError, match="increasing"):
        maps.window((500.0, 100.0), (0.0, 1000.0))


def test_export_maps_of_a_window_from_a_store_on_disk(store_run, tmp_path, capsys):
    from napari_trihrge.io import read_map
    from napari_trihrge.workflows import cli

    maps = map_store.open_map_store(store_run / map_store.STORE_NAME)
    rows_um, cols_um = _middle_window_um(maps)
    gene = maps.gene_names[1]
    out = tmp_path / "region.ome.zarr"
    assert cli.main(["export-maps", str(store_run), "--genes", gene, "--out", str(out),
                     "--window-um", *map(str, (*rows_um, *cols_um)), "--quiet"]) == 0
    values, stride_um, names, origin = read_map(out, with_origin=True)
    assert names == [gene] and stride_um == maps.stride_um
    i0, j0 = np.rint((np.asarray(origin) - maps.origin_rc_um) / maps.stride_um).astype(int)
    h, w = values.shape[1:]
    assert (h, w) == maps.window(rows_um, cols_um).mask.shape and i0 > 0 and j0 > 0
    np.testing.assert_allclose(np.asarray(values[0]), maps[gene][i0:i0 + h, j0:j0 + w],
                               rtol=0, atol=1e-5, equal_nan=True)
    bad = tmp_path / "nothing.ome.zarr"
    assert cli.main(["export-maps", str(store_run), "--out", str(bad), "--window-um",
                     "-900", "-800", "-900", "-800", "--quiet"]) == 2
    assert "holds no map location" in capsys.readouterr().err
    assert not bad.exists()


def test_export_maps_as_spatialdata(store_run, tmp_path):
    sd = pytest.importorskip("spatialdata")
    from napari_trihrge.io.spatialdata import MAPS, MAPS_STD

    maps = map_store.open_map_store(store_run / map_store.STORE_NAME)
    gene = maps.gene_names[1]
    out = tmp_path / "maps.zarr"
    assert map_export.export_maps(store_run, out, genes=[gene], fmt="spatialdata") == [out]
    sdata = sd.read_zarr(out)
    assert set(sdata.images) == {MAPS, MAPS_STD}
    image = sdata.images[MAPS]["scale0"]["image"]
    assert list(image.coords["c"].values) == [gene]
    np.testing.assert_array_equal(np.asarray(image.values[0]), maps[gene])
    assert not list(tmp_path.glob(".trihrge_maps_*"))  # the temporary OME-Zarr is gone
    with pytest.raises(TrihrgeInputError, match="exists"):
        map_export.export_maps(store_run, out, fmt="spatialdata")


@pytest.mark.shared_data
def test_float16_store_equals_the_direct_maps_on_her2st_c3(tmp_path):
    """A real section: the default store (format 3: float16 image features and the networks,
    on disk) within the documented tolerance of the direct maps, values and spread."""
    from conftest import shared_path
    from napari_trihrge import io

    adata = io.read(shared_path("her2st", "C3"))
    adata.uns.pop("truth", None)
    cfg = _config()
    result = tasks.enhance(adata, factor=2, stride_um=STRIDE_UM, config=cfg, trust=False,
                           map_store=str(tmp_path / map_store.STORE_NAME))
    maps = result.maps
    assert maps._group.attrs["factor_dtype"] == "float16"
    assert maps._group.attrs["version"] == 3 and maps.factor_model is not None
    assert maps._group["locations/image_features"].dtype == np.float16
    direct = _direct_maps(adata, result, cfg)
    inside = maps.mask
    values = np.asarray(maps.values)[:, inside]
    assert values.std() > 0.05  # real maps, not constants
    assert np.abs(values - np.asarray(direct.values)[:, inside]).max() < DISK_TOL
    assert np.abs(np.asarray(maps.std)[:, inside]
                  - np.asarray(direct.std)[:, inside]).max() < DISK_TOL


@pytest.mark.parametrize("n_locations", [4096, 4095, 0])
def test_one_gene_output_layer_in_halves_equals_the_unsplit_product(n_locations):
    """The viewer's one-gene product (each network's locations in two halves, one per thread)
    gives exactly the bits of one batched product over every location; an odd count is not
    split (nor none)."""
    import torch

    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((5, n_locations, 512), dtype=np.float32)  # a real width
    weight = rng.normal(0, 0.05, (5, 1, 512)).astype(np.float32)
    with torch.no_grad():  # the product as computed before the split
        whole = torch.bmm(torch.from_numpy(hidden), torch.from_numpy(
            np.ascontiguousarray(weight.transpose(0, 2, 1)))).numpy()
    out = map_store._networks_linear(hidden, weight)
    assert out.shape == (5, n_locations, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out, whole)
    exact = np.einsum("nmh,ngh->nmg", hidden.astype(np.float64), weight.astype(np.float64))
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-6)
