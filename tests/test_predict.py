"""predict, ensembles, chunked prediction, dense-map writing and attention weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.model import ModelConfig, TriHRGENet
from napari_trihrge.predict import (
    attention_weights,
    dense_map_chunks,
    predict,
    predict_ensemble,
    predict_in_chunks,
    write_gene_chunks,
)
from napari_trihrge.progress import Progress

SMALL = {"hidden_dim": 32, "attention_dim": 16, "decoder_dims": (32, 48)}
G = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed=0, n_scales=2, neighbour=False):
    torch.manual_seed(seed)
    m = TriHRGENet(ModelConfig(in_dim=5 if n_scales else 0, n_genes=G, n_scales=n_scales,
                               neighbour_input=neighbour, **SMALL))
    # non-trivial BatchNorm running statistics, as after training
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, n_scales, 5) if n_scales else None,
              torch.rand(16, G) if neighbour else None)
    return m.eval()


def _data(n=103, n_scales=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, n_scales, 5)).astype(np.float32),
            rng.random((n, G)).astype(np.float32))


def test_predict_shape_dtype_and_batch_independence():
    model = _model()
    x, _ = _data()
    a = predict(model, x, batch_size=4096)
    b = predict(model, x, batch_size=7)
    assert a.shape == (103, G) and a.dtype == np.float32 and (a >= 0).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(a, model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_predict_restores_training_mode_and_accepts_float16():
    model = _model()
    model.train()
    x, _ = _data(20)
    p16 = predict(model, x.astype(np.float16))
    assert model.training
    p32 = predict(model.eval(), x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(p16, p32)


def test_predict_in_chunks_equals_predict():
    model = _model(neighbour=True)
    x, nb = _data()
    full = predict(model, x, nb)
    parts = list(predict_in_chunks(model, x, nb, chunk_size=25, batch_size=10))
    assert [p[0] for p in parts] == [slice(0, 25), slice(25, 50), slice(50, 75),
                                     slice(75, 100), slice(100, 103)]
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), full, rtol=1e-5,
                               atol=1e-6)
    # a features function computing the inputs on demand
    calls = []

    def features_fn(s, e):
        calls.append((s, e))
        return x[s:e], nb[s:e]

    parts = list(predict_in_chunks(model, features_fn, n_locations=103, chunk_size=50))
    assert calls == [(0, 50), (50, 100), (100, 103)]
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), full, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(TrihrgeInputError, match="n_locations"):
        list(predict_in_chunks(model, features_fn))


def test_ensemble_mean_and_std():
    models = [_model(seed) for seed in (0, 1, 2)]
    x, _ = _data(40)
    each = np.stack([predict(m, x) for m in models])
    mean, std = predict_ensemble(models, x, batch_size=16)
    np.testing.assert_allclose(mean, each.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, each.std(0), rtol=1e-4, atol=1e-6)
    parts = list(predict_in_chunks(models, x, chunk_size=15, return_std=True))
    np.testing.assert_allclose(np.concatenate([p[2] for p in parts]), std, rtol=1e-5,
                               atol=1e-6)
    m1, s1 = predict_ensemble(models[:1], x)
    assert np.all(s1 == 0)


def test_neighbour_only_and_mixed_ensembles():
    x, nb = _data(30)
    nb_model = _model(n_scales=0, neighbour=True)
    p = predict(nb_model, None, nb)
    np.testing.assert_array_equal(p, predict(nb_model, np.zeros((30, 0, 1)), nb))
    mean, _ = predict_ensemble([nb_model, _model(neighbour=True)], x, nb)
    assert mean.shape == (30, G)


def test_attention_weights_sum_to_one():
    x, nb = _data(50)
    w = attention_weights(_model(neighbour=True), x, nb, batch_size=16)
    assert w.shape == (50, 3) and w.dtype == np.float32
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
    w3 = attention_weights(_model(n_scales=3), _data(8, 3)[0])
    assert w3.shape == (8, 3)


def test_wrong_inputs_are_reported():
    model = _model(neighbour=True)
    x, nb = _data(10)
    with pytest.raises(TrihrgeInputError, match="neighbour"):
        predict(model, x)
    with pytest.raises(TrihrgeInputError, match="expects"):
        predict(model, x[:, :1], nb)
    with pytest.raises(TrihrgeInputError, match="rows"):
        predict(model, x, nb[:5])
    with pytest.raises(TrihrgeInputError, match="no model"):
        predict_ensemble([], x, nb)


def test_write_gene_chunks_into_2d_and_3d_targets():
    model = _model()
    h, w = 9, 7
    x, _ = _data(h * w)
    full = predict(model, x)  # (h*w, G)
    calls = []

    def predictions_fn(s, e):
        calls.append((s, e))
        return predict(model, x[s:e])

    flat = np.zeros((G, h * w), dtype=np.float32)
    write_gene_chunks(predictions_fn, h * w, G, flat, gene_chunk=4, location_block=20)
    np.testing.assert_allclose(flat, full.T, rtol=1e-5, atol=1e-6)
    assert calls == [(0, 20), (20, 40), (40, 60), (60, 63)]

    calls.clear()
    events = []
    maps = np.zeros((G, h, w), dtype=np.float16)
    write_gene_chunks(predictions_fn, h * w, G, maps, gene_chunk=4, location_block=20,
                      progress=Progress(on_event=events.append))
    assert calls == [(0, 14), (14, 28), (28, 42), (42, 56), (56, 63)]  # whole rows (2 x 7)
    np.testing.assert_allclose(maps, full.T.reshape(G, h, w).astype(np.float16))
    assert events[0] == {"event": "stage", "stage": "writing maps", "total": 5}

    seen = []
    write_gene_chunks(predictions_fn, h * w, G, lambda gs, ls, v: seen.append((gs, ls, v.shape)),
                      gene_chunk=4, location_block=63)
    assert seen == [(slice(0, 4), slice(0, 63), (4, 63)), (slice(4, 6), slice(0, 63), (2, 63))]


def test_write_gene_chunks_into_zarr_with_whole_chunks(tmp_path):
    zarr = pytest.importorskip("zarr")
    model = _model()
    h, w = 10, 6
    x, _ = _data(h * w)
    chunks = dense_map_chunks(G, h, w, gene_chunk=4, location_block=24)
    assert chunks == (4, 4, 6)
    z = zarr.open_array(str(tmp_path / "m.zarr"), mode="w", shape=(G, h, w), chunks=chunks,
                        dtype="float32")
    write_gene_chunks(lambda s, e: predict(model, x[s:e]), h * w, G, z, gene_chunk=4,
                      location_block=24)
    np.testing.assert_allclose(z[:], predict(model, x).T.reshape(G, h, w), rtol=1e-5, atol=1e-6)


def test_write_gene_chunks_validates():
    with pytest.raises(TrihrgeInputError, match="target has shape"):
        write_gene_chunks(lambda s, e: np.zeros((e - s, G)), 10, G, np.zeros((G, 3, 4)))
    with pytest.raises(TrihrgeInputError, match="returned shape"):
        write_gene_chunks(lambda s, e: np.zeros((e - s, G + 1)), 10, G, np.zeros((G, 10)))
