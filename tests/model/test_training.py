"""fit(): learning, early stopping, determinism, aggregation loss, progress and cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import NET_TINY
from napari_trihrge.errors import Cancelled, TrihrgeInputError
from napari_trihrge.model import training
from napari_trihrge.model.predict import predict
from napari_trihrge.model.training import TrainConfig, _batches, _lr_lambda, fit, fit_ensemble
from napari_trihrge.progress import Progress

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def regression(n=500, s=2, d=8, g=10, noise=0.1, seed=0):
    """features -> targets through a random nonlinear map (different per scale) + noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, s, d)).astype(np.float32)
    w1 = rng.normal(size=(s * d, 16)) / np.sqrt(s * d)
    w2 = rng.normal(size=(16, g)) / np.sqrt(16)
    y = np.log1p(np.exp(2 * np.tanh(x.reshape(n, -1) @ w1 * 1.5) @ w2))
    y = y + noise * rng.normal(size=y.shape)
    return x, np.clip(y, 0, None).astype(np.float32)


def test_training_learns_a_nonlinear_map_and_beats_the_mean():
    x, y = regression()
    res = fit(x, y, train_config=TrainConfig(max_epochs=40, batch_size=32, val_fraction=0.2,
                                             patience=40), **NET_TINY)
    v, t = res.val_indices, res.train_indices
    assert len(v) == 100 and len(np.intersect1d(v, t)) == 0 and len(v) + len(t) == 500
    mean_mse = float(((y[v] - y[t].mean(0)) ** 2).mean())
    pred_mse = float(((predict(res.model, x[v]) - y[v]) ** 2).mean())
    first = res.history[0]["val_loss"]
    assert res.best_val_loss < 0.7 * first
    assert pred_mse < 0.6 * mean_mse
    assert pred_mse == pytest.approx(res.best_val_loss, rel=1e-4)  # best weights restored
    assert not res.model.training
    assert set(res.history[0]) == {"epoch", "train_loss", "val_loss", "lr"}


def test_early_stopping_on_pure_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2, 8)).astype(np.float32)
    y = rng.random((200, 5)).astype(np.float32)
    cfg = TrainConfig(max_epochs=200, batch_size=32, patience=5, warmup_epochs=2)
    res = fit(x, y, train_config=cfg, **NET_TINY)
    assert len(res.history) < 60
    assert len(res.history) == max(res.best_epoch + cfg.patience, cfg.warmup_epochs + 1)
    best = min(h["val_loss"] for h in res.history)
    assert res.best_val_loss <= best * (1 + 1e-3)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_identical_weights_and_other_seed_differs():
    x, y = regression(n=150)
    rng = np.random.default_rng(3)
    nb = rng.random((150, 10)).astype(np.float32)
    cfg = TrainConfig(max_epochs=4, batch_size=16, seed=7)
    before = torch.random.get_rng_state()
    a = _state(fit(x, y, neighbour=nb, train_config=cfg, **NET_TINY).model)
    assert torch.equal(torch.random.get_rng_state(), before)  # caller's RNG left alone
    b = _state(fit(x, y, neighbour=nb, train_config=cfg, **NET_TINY).model)
    c = _state(fit(x, y, neighbour=nb, train_config=TrainConfig(max_epochs=4, batch_size=16,
                                                                seed=8), **NET_TINY).model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not torch.are_deterministic_algorithms_enabled()  # global flag restored


def test_cpu_fit_is_the_same_without_torch_deterministic_switch(monkeypatch):
    # on CPU the fit leaves torch.use_deterministic_algorithms alone (it imports the compiler):
    # the weights must be those of a fit with the switch on (the sub-locations' index_put and
    # masks and the neighbour input included)
    x, y, z, mask = _aggregation_problem(n=80)
    nb = np.random.default_rng(1).random((80, 6)).astype(np.float32)
    sub_nb = np.random.default_rng(2).random((80, 7, 6)).astype(np.float32)
    cfg = TrainConfig(max_epochs=3, batch_size=16, seed=3)
    plain = _state(fit(x, y, neighbour=nb, sub_features=z, sub_mask=mask, sub_neighbour=sub_nb,
                       train_config=cfg, **NET_TINY).model)
    switched_on = []
    real = training._deterministic

    def always_on(enabled):
        switched_on.append(enabled)
        return real(True)

    monkeypatch.setattr(training, "_deterministic", always_on)
    forced = _state(fit(x, y, neighbour=nb, sub_features=z, sub_mask=mask, sub_neighbour=sub_nb,
                        train_config=cfg, **NET_TINY).model)
    assert switched_on == [False]  # CPU: the switch is not asked for
    assert all(torch.equal(plain[k], forced[k]) for k in plain)
    assert not torch.are_deterministic_algorithms_enabled()


def _aggregation_problem(n=240, k=7, d=4, g=5, seed=0):
    """Spot target = mean over its valid sub-locations of f(sub-location features); the spot
    bag sees only the average feature, so only the aggregation loss teaches f itself."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(n, 1, 1, d))
    z = (centre + 0.7 * rng.normal(size=(n, k, 1, d))).astype(np.float32)
    mask = rng.random((n, k)) < 0.8
    mask[:, 0] = True
    w = rng.normal(size=(d, g)) / np.sqrt(d)
    f = np.abs(z[:, :, 0] @ w)  # (n, k, g); |.| so the spot average alone cannot tell f
    m = mask[..., None]
    y = ((f * m).sum(1) / m.sum(1)).astype(np.float32)
    x = ((z * m[..., None]).sum(1) / m.sum(1)[..., None]).astype(np.float32)
    return x, y, z, mask


def _aggregation_error(model, z, mask, y):
    n, k = mask.shape
    p = predict(model, z.reshape(n * k, *z.shape[2:])).reshape(n, k, -1)
    m = mask[..., None]
    agg = (p * m).sum(1) / m.sum(1)
    return float(((agg - y) ** 2).mean())


def test_aggregation_loss_reduces_the_aggregation_error():
    x, y, z, mask = _aggregation_problem()
    cfg = TrainConfig(max_epochs=40, batch_size=32, lr=3e-3, patience=40, val_fraction=0.1)
    with_agg = fit(x, y, sub_features=z, sub_mask=mask, train_config=cfg, **NET_TINY)
    without = fit(x, y, sub_features=z, sub_mask=mask,
                  train_config=TrainConfig(**{**cfg.to_dict(), "aggregation_weight": 0.0}),
                  **NET_TINY)
    untrained = fit(x, y, sub_features=z, sub_mask=mask,
                    train_config=TrainConfig(max_epochs=1, batch_size=32, lr=1e-9), **NET_TINY)
    e_with = _aggregation_error(with_agg.model, z, mask, y)
    e_without = _aggregation_error(without.model, z, mask, y)
    e_untrained = _aggregation_error(untrained.model, z, mask, y)
    assert e_with < 0.8 * e_without  # measured ratio ~0.5-0.6 over three problem seeds
    assert e_with < 0.25 * e_untrained  # measured ~0.07-0.10


def test_aggregation_with_neighbour_input_runs():
    x, y, z, mask = _aggregation_problem(n=60)
    rng = np.random.default_rng(0)
    nb = rng.random((60, 5)).astype(np.float32)
    sub_nb = rng.random((60, 7, 5)).astype(np.float32)
    res = fit(x, y, neighbour=nb, sub_features=z, sub_neighbour=sub_nb, sub_mask=mask,
              train_config=TrainConfig(max_epochs=2, batch_size=16), **NET_TINY)
    assert res.model.config.neighbour_input and len(res.history) == 2
    with pytest.raises(TrihrgeInputError, match="sub_neighbour"):
        fit(x, y, neighbour=nb, sub_features=z, sub_mask=mask,
            train_config=TrainConfig(max_epochs=1), **NET_TINY)
    with pytest.raises(TrihrgeInputError, match="sub_mask"):
        fit(x, y, sub_features=z, sub_mask=mask[:, :3], train_config=TrainConfig(max_epochs=1),
            **NET_TINY)


def test_neighbour_skip_learns_how_far_to_trust_the_neighbours():
    """Genes 0-2 equal their neighbour value, genes 3-5 ignore it: the skip opens for the first."""
    rng = np.random.default_rng(0)
    n, g = 400, 6
    x = rng.normal(size=(n, 2, 4)).astype(np.float32)
    nb = rng.gamma(2.0, 1.0, size=(n, g)).astype(np.float32)
    y = np.where(np.arange(g) < 3, nb, 1.0 + 0.3 * rng.normal(size=(n, g))).astype(np.float32)
    res = fit(x, y.clip(0), neighbour=nb, neighbour_skip=True,
              train_config=TrainConfig(max_epochs=15, batch_size=32), **NET_TINY)
    w = res.model.skip_weight.detach().numpy()
    assert res.config.neighbour_skip
    assert w[:3].min() > 0.6 and np.abs(w[3:]).max() < 0.3, w


def test_neighbour_only_model_including_empty_feature_array():
    rng = np.random.default_rng(0)
    nb = rng.random((80, 6)).astype(np.float32)
    y = (nb * 2).astype(np.float32)
    for feats in (None, np.zeros((80, 0, 1), dtype=np.float32)):
        res = fit(feats, y, neighbour=nb, train_config=TrainConfig(max_epochs=2, batch_size=16),
                  **NET_TINY)
        assert res.config.n_scales == 0 and res.config.neighbour_input
        assert predict(res.model, feats, nb).shape == (80, 6)


def test_progress_events_and_cancel_propagates():
    x, y = regression(n=120)
    events = []
    progress = Progress(on_event=events.append)
    fit(x, y, train_config=TrainConfig(max_epochs=3, batch_size=16, val_fraction=0.2),
        progress=progress, **NET_TINY)
    assert events[0] == {"event": "stage", "stage": "training", "total": 3}
    metrics = [e for e in events if e["event"] == "metric"]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert all(np.isfinite(m["train_loss"]) and np.isfinite(m["val_loss"]) for m in metrics)

    def cancel_at_epoch_2(event):
        if event["event"] == "metric" and event["epoch"] == 2:
            progress2.cancel()

    progress2 = Progress(on_event=cancel_at_epoch_2)
    with pytest.raises(Cancelled):
        fit(x, y, train_config=TrainConfig(max_epochs=50, batch_size=16), progress=progress2,
            **NET_TINY)
    assert progress2.done == 2
    assert not torch.are_deterministic_algorithms_enabled()


def test_no_validation_split_runs_all_epochs_and_schedule_ends_at_min_lr():
    x, y = regression(n=100)
    cfg = TrainConfig(max_epochs=6, batch_size=16, val_fraction=0.0, warmup_epochs=2,
                      lr=1e-3, min_lr=1e-6)
    res = fit(x, y, train_config=cfg, **NET_TINY)
    assert len(res.history) == 6 and res.best_epoch == 6 and len(res.val_indices) == 0
    lrs = [h["lr"] for h in res.history]
    assert lrs[1] == pytest.approx(1e-3, rel=0.01)  # end of warm-up
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lrs[-1] == pytest.approx(1e-6, rel=0.01)
    f = _lr_lambda(10, 100, 1e-3)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(100) == pytest.approx(1e-3) and f(55) < f(20)


def test_batches_never_leave_a_single_sample():
    sizes = [len(b) for b in _batches(np.arange(65), 64)]
    assert sizes == [65]
    assert [len(b) for b in _batches(np.arange(129), 64)] == [64, 65]
    assert [len(b) for b in _batches(np.arange(10), 4)] == [4, 4, 2]


def test_fit_ensemble_uses_each_seed():
    x, y = regression(n=80)
    results = fit_ensemble(x, y, seeds=(3, 4), train_config=TrainConfig(max_epochs=2,
                                                                         batch_size=16), **NET_TINY)
    assert [r.train_config.seed for r in results] == [3, 4]
    w = [r.model.decoder[-1].weight for r in results]
    assert not torch.equal(w[0], w[1])


def test_bad_inputs_are_reported():
    x, y = regression(n=50)
    cfg = TrainConfig(max_epochs=1)
    bad = y.copy()
    bad[0, 0] = np.nan
    with pytest.raises(TrihrgeInputError, match="NaN"):
        fit(x, bad, train_config=cfg, **NET_TINY)
    with pytest.raises(TrihrgeInputError, match="rows"):
        fit(x[:40], y, train_config=cfg, **NET_TINY)
    with pytest.raises(TrihrgeInputError, match="unknown model settings"):
        fit(x, y, train_config=cfg, hidden=3)
    with pytest.raises(TrihrgeInputError, match="batch_size"):
        fit(x, y, train_config=TrainConfig(batch_size=1))
    with pytest.raises(TrihrgeInputError, match="no input"):
        fit(None, y, train_config=cfg)


def test_bf16_autocast_path_runs_on_cpu():
    """The CUDA path trains under bf16 autocast; check the same code on CPU for dtype errors."""
    from napari_trihrge.model.network import ModelConfig, TriHRGENet
    from napari_trihrge.model.training import _batch_loss, _Data

    x, y, z, mask = _aggregation_problem(n=20)
    nb = np.random.default_rng(0).random((20, 5)).astype(np.float32)
    model = TriHRGENet(ModelConfig(in_dim=4, n_genes=5, n_scales=1, neighbour_input=True,
                                   **NET_TINY))
    data = _Data(x=torch.from_numpy(x), nb=torch.from_numpy(nb), y=torch.from_numpy(y),
                 sub_x=z, sub_nb=np.repeat(nb[:, None], 7, axis=1), sub_mask=mask)
    loss, n = _batch_loss(model, data, np.arange(10), torch.device("cpu"), 1.0, True)
    loss.backward()
    assert n == 10 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert model.decoder[0].weight.grad is not None


def _counts_problem(n=400, g=6, seed=0):
    """Counts whose rate depends on the features, with library sizes that vary 4-fold."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2, 8)).astype(np.float32)
    w = rng.normal(size=(16, g)) / 4
    eta = np.log(20.0) + np.tanh(x.reshape(n, -1) @ w) * 1.5  # log normalised count per 1e4
    library = rng.uniform(2e3, 8e3, size=n)
    counts = rng.poisson(np.exp(eta) * library[:, None] / 1e4).astype(np.float32)
    y = np.log1p(counts / library[:, None] * 1e4).astype(np.float32)
    return x, y, counts, library.astype(np.float32), eta


@pytest.mark.parametrize("loss", ["poisson", "negative_binomial"])
def test_count_loss_learns_the_rate_from_counts_and_library_sizes(loss):
    x, y, counts, library, eta = _counts_problem()
    res = fit(x, y, counts=counts, library_size=library, loss=loss,
              output_activation="softplus",
              train_config=TrainConfig(max_epochs=30, batch_size=32, val_fraction=0.2,
                                       patience=30), **NET_TINY)
    v = res.val_indices
    pred = predict(res.model, x[v])
    truth = np.log1p(np.exp(eta[v]))  # the expected log-normalised expression
    pcc = [np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(y.shape[1])]
    assert np.mean(pcc) > 0.6
    assert abs(float(pred.mean()) - float(truth.mean())) < 0.5  # the level, through softplus
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_count_loss_without_counts_is_refused_before_training():
    x, y, counts, library, _ = _counts_problem(n=40)
    with pytest.raises(TrihrgeInputError, match="raw counts"):
        fit(x, y, loss="poisson", output_activation="softplus", **NET_TINY)
    with pytest.raises(TrihrgeInputError, match="library"):
        fit(x, y, counts=counts, library_size=np.ones(40, dtype=np.float32), loss="poisson",
            output_activation="softplus", **NET_TINY)


def test_count_loss_with_the_aggregation_term_runs():
    x, y, counts, library, _ = _counts_problem(n=60)
    sub = np.repeat(x[:, None], 3, axis=1)
    res = fit(x, y, counts=counts, library_size=library, loss="poisson",
              output_activation="softplus", sub_features=sub,
              train_config=TrainConfig(max_epochs=2, batch_size=16), **NET_TINY)
    assert np.isfinite([h["train_loss"] for h in res.history]).all()


def test_fit_survives_an_llvm_already_loaded(tmp_path):
    """With software OpenGL (Mesa's libLLVM mapped: a viewer, a notebook holding napari, tests
    after GUI tests) the optimiser's import of torch's compiler would import triton, whose own
    LLVM segfaults the process; fit keeps triton out. Run in a fresh process."""
    import glob
    import importlib.util
    import subprocess
    import sys

    system_llvm = sorted(glob.glob("/usr/lib/*/libLLVM*.so*"))
    if not system_llvm or importlib.util.find_spec("triton") is None:
        pytest.skip("needs a system libLLVM and triton installed")
    script = tmp_path / "fit_after_llvm.py"
    script.write_text(
        "import ctypes, numpy as np\n"
        f"ctypes.CDLL({system_llvm[-1]!r}, mode=ctypes.RTLD_GLOBAL)\n"
        "from napari_trihrge.model.training import TrainConfig, fit\n"
        "rng = np.random.default_rng(0)\n"
        "fit(rng.normal(size=(12, 1, 4)).astype(np.float32),\n"
        "    rng.normal(size=(12, 3)).astype(np.float32),\n"
        "    train_config=TrainConfig(max_epochs=1, device='cpu'))\n"
        "print('trained')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained" in done.stdout
