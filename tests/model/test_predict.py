"""predict, ensembles, chunked prediction, dense-map writing and attention weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import NET_TINY
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.model.network import ModelConfig, TriHRGENet
from napari_trihrge.model.predict import (
    predict,
    predict_ensemble,
    predict_in_chunks,
)

G = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed=0, n_scales=2, neighbour=False):
    torch.manual_seed(seed)
    m = TriHRGENet(ModelConfig(in_dim=5 if n_scales else 0, n_genes=G, n_scales=n_scales,
                               neighbour_input=neighbour, **NET_TINY))
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
