"""TriHRGENet shapes, attention, standardisation and the model files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import NET_TINY
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.model.network import (
    MODEL_META,
    MODEL_WEIGHTS,
    ModelConfig,
    TriHRGENet,
    load_model,
    save_model,
)


def _model(n_scales=2, neighbour=False, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(in_dim=12 if n_scales else 0, n_genes=7, n_scales=n_scales,
                      neighbour_input=neighbour, **{**NET_TINY, **kw})
    return TriHRGENet(cfg)


def _inputs(n=9, n_scales=2, neighbour=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    bag = torch.randn(n, n_scales, 12, generator=g) if n_scales else None
    nb = torch.rand(n, 7, generator=g) * 3 if neighbour else None
    return bag, nb


@pytest.mark.parametrize("n_scales,neighbour", [(2, False), (3, False), (2, True), (3, True),
                                                (0, True), (1, False)])
def test_shapes_attention_and_non_negative(n_scales, neighbour):
    model = _model(n_scales, neighbour)
    bag, nb = _inputs(9, n_scales, neighbour)
    for mode in (model.train, model.eval):
        mode()
        out, w = model(bag, nb, return_attention=True)
        assert out.shape == (9, 7)
        assert w.shape == (9, n_scales + int(neighbour))
        if not model.training:  # the default 'clip' output is linear while training
            assert (out >= 0).all()
        torch.testing.assert_close(w.sum(dim=1), torch.ones(9))
    assert model(bag, nb).shape == (9, 7)


@pytest.mark.parametrize("activation", ["clip", "softplus", "relu"])
def test_output_is_non_negative_even_with_negative_bias(activation):
    model = _model(output_activation=activation).eval()
    with torch.no_grad():
        model.decoder[-1].bias.fill_(-5.0)
    out = model(*_inputs())
    assert (out >= 0).all()
    assert model.config.output_activation == activation


def test_attention_responds_to_inputs():
    model = _model(3).eval()
    bag, _ = _inputs(20, 3)
    _, w = model(bag, return_attention=True)
    assert w.std(dim=0).sum() > 0  # not a constant: depends on the location


def test_invalid_configs_are_rejected():
    with pytest.raises(TrihrgeInputError, match="no input"):
        ModelConfig(in_dim=0, n_genes=5, n_scales=0)
    with pytest.raises(TrihrgeInputError, match="output_activation"):
        ModelConfig(in_dim=4, n_genes=5, n_scales=2, output_activation="tanh")
    with pytest.raises(TrihrgeInputError, match="dropout"):
        ModelConfig(in_dim=4, n_genes=5, n_scales=2, dropout=1.5)
    cfg = ModelConfig(in_dim=4, n_genes=5, n_scales=1, neighbour_input=True)
    assert cfg.neighbour_dim == 5 and cfg.n_tokens == 2


def test_check_inputs_reports_wrong_shapes():
    model = _model(2, neighbour=True)
    bag, nb = _inputs(5, 2, True)
    model.check_inputs(bag, nb)
    with pytest.raises(TrihrgeInputError, match="expects"):
        model.check_inputs(bag[:, :1], nb)
    with pytest.raises(TrihrgeInputError, match="neighbour"):
        model.check_inputs(bag, None)
    with pytest.raises(TrihrgeInputError, match="neighbour"):
        model.check_inputs(bag, nb[:, :3])


def test_standardisation_is_applied_and_validated():
    model = _model(2).eval()
    bag, _ = _inputs(30, 2)
    shifted = bag * 10 + 5
    model.set_standardization(shifted.numpy())
    torch.testing.assert_close(model.feature_mean, shifted.mean(0))
    # standardised input makes the shifted features look like the originals
    torch.testing.assert_close(model(shifted), _standardised_reference(model, shifted))
    with pytest.raises(TrihrgeInputError):
        model.set_standardization(np.zeros((4, 3, 12)))
    const = np.ones((10, 2, 12))
    model.set_standardization(const)
    assert torch.all(model.feature_std == 1)


def _standardised_reference(model, x):
    mean, std = model.feature_mean.clone(), model.feature_std.clone()
    model.feature_mean.zero_()
    model.feature_std.fill_(1)
    try:
        return model((x - mean) / std)
    finally:
        model.feature_mean.copy_(mean)
        model.feature_std.copy_(std)


def test_neighbour_skip_adds_the_weighted_centred_neighbour_expression():
    with pytest.raises(TrihrgeInputError, match="neighbour_skip"):
        ModelConfig(in_dim=4, n_genes=5, n_scales=1, neighbour_skip=True)
    with pytest.raises(TrihrgeInputError, match="neighbour_skip"):
        ModelConfig(in_dim=4, n_genes=5, n_scales=1, neighbour_input=True, neighbour_dim=3,
                     neighbour_skip=True)
    plain = _model(2, True).eval()
    model = _model(2, True, neighbour_skip=True, output_activation="none").eval()
    bag, nb = _inputs(9, 2, True)
    model.set_standardization(None, nb.numpy())
    # a new skip starts closed: the model is the plain network
    torch.testing.assert_close(model.skip_weight.detach(), torch.zeros(7))
    assert len(dict(model.named_parameters())) == len(dict(plain.named_parameters())) + 1
    with torch.no_grad():
        base = model(bag, nb)
        model.skip_weight.copy_(torch.linspace(0, 1, 7))
        out = model(bag, nb)
    expected = base + torch.linspace(0, 1, 7) * (nb - nb.mean(dim=0))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_scales,neighbour,skip", [(2, False, False), (3, True, False),
                                                     (0, True, False), (2, True, True)])
def test_save_load_round_trip(tmp_path, n_scales, neighbour, skip):
    model = _model(n_scales, neighbour, neighbour_skip=skip)
    if skip:
        with torch.no_grad():
            model.skip_weight.uniform_(0, 1)
    bag, nb = _inputs(11, n_scales, neighbour)
    model.set_standardization(bag.numpy() * 2 if bag is not None else None,
                              nb.numpy() if nb is not None else None)
    model.eval()
    extra = {"genes": np.array(["A", "B"]), "windows_um": (112.0, 336.0),
             "encoder": "handcrafted", "n": np.int64(3)}
    save_model(tmp_path / "m", model, model.config, extra)
    assert {p.name for p in (tmp_path / "m").iterdir()} == {MODEL_WEIGHTS, MODEL_META}
    loaded, cfg, extra2 = load_model(tmp_path / "m")
    assert cfg == model.config and not loaded.training
    assert extra2 == {"genes": ["A", "B"], "windows_um": [112.0, 336.0],
                      "encoder": "handcrafted", "n": 3}
    with torch.no_grad():
        torch.testing.assert_close(loaded(bag, nb), model(bag, nb), rtol=0, atol=0)
    # the weights file is a plain state_dict readable with weights_only
    state = torch.load(tmp_path / "m" / MODEL_WEIGHTS, weights_only=True)
    assert set(state) == set(model.state_dict())


def test_save_refuses_to_overwrite(tmp_path):
    model = _model()
    save_model(tmp_path, model, extra={"v": 1})
    with pytest.raises(TrihrgeInputError, match="already saved"):
        save_model(tmp_path, model, extra={"v": 2})
    assert load_model(tmp_path)[2] == {"v": 1}
    save_model(tmp_path, model, extra={"v": 2}, overwrite=True)
    assert load_model(tmp_path)[2] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL_META, MODEL_WEIGHTS]


def test_save_rejects_unserialisable_extra_and_wrong_config(tmp_path):
    model = _model()
    with pytest.raises(TrihrgeInputError, match="JSON"):
        save_model(tmp_path, model, extra={"x": object()})
    other = ModelConfig(in_dim=12, n_genes=8, n_scales=2, **NET_TINY)
    with pytest.raises(TrihrgeInputError, match="does not match"):
        save_model(tmp_path, model, other)
    assert not (tmp_path / MODEL_WEIGHTS).exists()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(TrihrgeInputError, match="missing"):
        load_model(tmp_path / "nothing")
    model = _model()
    save_model(tmp_path / "a", model)
    # corrupt weights
    (tmp_path / "a" / MODEL_WEIGHTS).write_bytes(b"not a torch file")
    with pytest.raises(TrihrgeInputError, match="cannot be read"):
        load_model(tmp_path / "a")
    # config that does not match the weights
    save_model(tmp_path / "b", model)
    meta = json.loads((tmp_path / "b" / MODEL_META).read_text())
    meta["config"]["hidden_dim"] = 64
    (tmp_path / "b" / MODEL_META).write_text(json.dumps(meta))
    with pytest.raises(TrihrgeInputError, match="do not match"):
        load_model(tmp_path / "b")
    # broken JSON and foreign JSON
    (tmp_path / "b" / MODEL_META).write_text("{not json")
    with pytest.raises(TrihrgeInputError, match="JSON"):
        load_model(tmp_path / "b")
    (tmp_path / "b" / MODEL_META).write_text(json.dumps({"hello": 1}))
    with pytest.raises(TrihrgeInputError, match="not a napari-trihrge"):
        load_model(tmp_path / "b")
    meta["config"]["hidden_dim"] = 32
    meta["config"]["mystery"] = 1
    (tmp_path / "b" / MODEL_META).write_text(json.dumps(meta))
    with pytest.raises(TrihrgeInputError, match="unknown"):
        load_model(tmp_path / "b")


def test_output_bias_starts_at_the_gene_means():
    import numpy as np
    import torch

    from napari_trihrge.model.network import ModelConfig, TriHRGENet

    rng = np.random.default_rng(0)
    targets = rng.gamma(2.0, 2.0, size=(50, 7)).astype(np.float32)
    for activation in ("relu", "softplus"):
        model = TriHRGENet(ModelConfig(in_dim=4, n_genes=7, n_scales=2, hidden_dim=8,
                                       attention_dim=4, decoder_dims=(8,),
                                       output_activation=activation))
        model.init_output_bias(targets)
        with torch.no_grad():
            model.decoder[-1].weight.zero_()
            out = model.eval()(torch.zeros(3, 2, 4)).numpy()
        np.testing.assert_allclose(out[0], targets.mean(axis=0), rtol=1e-4)


def test_clip_output_has_no_dead_zone_while_training():
    import torch

    from napari_trihrge.model.network import ModelConfig, TriHRGENet

    model = TriHRGENet(ModelConfig(in_dim=4, n_genes=3, n_scales=2, hidden_dim=8,
                                   attention_dim=4, decoder_dims=(8,)))
    assert model.config.output_activation == "clip"
    with torch.no_grad():
        model.decoder[-1].bias.fill_(-5.0)  # every output far below 0
    x = torch.randn(6, 2, 4)
    out = model.train()(x)
    assert (out < 0).all()
    out.sum().backward()  # the gradient reaches the output layer (ReLU would give exactly 0)
    assert model.decoder[-1].bias.grad.abs().min() > 0
    with torch.no_grad():
        assert (model.eval()(x) == 0).all()  # predictions are clipped at 0


@pytest.mark.parametrize("rank", [3, 5])
def test_gene_program_output_has_rank_k(rank):
    model = _model(n_scales=2, output_rank=rank)
    assert model.config.last_hidden_dim == rank
    model.eval()
    bag, _ = _inputs(n=40)
    with torch.no_grad():
        out = model.output_before_activation(bag)[0]
        hidden = model.last_hidden(bag)
    assert hidden.shape == (40, rank)
    centred = (out - out.mean(dim=0)).numpy()  # 7 genes, but only `rank` programs
    assert np.linalg.matrix_rank(centred, tol=1e-4) == rank
    full = _model(n_scales=2)
    with torch.no_grad():
        full.eval()
        centred_full = (full.output_before_activation(bag)[0]
                        - full.output_before_activation(bag)[0].mean(dim=0)).numpy()
    assert np.linalg.matrix_rank(centred_full, tol=1e-4) == 7


def test_count_loss_model_predicts_softplus_of_its_log_rate():
    model = _model(n_scales=2, loss="poisson", output_activation="softplus")
    model.eval()
    bag, _ = _inputs()
    with torch.no_grad():
        eta = model.output_before_activation(bag)[0]
        pred = model(bag)
    torch.testing.assert_close(pred, torch.log1p(torch.exp(eta)))
    assert model.log_theta is None
    assert _model(loss="negative_binomial", output_activation="softplus").log_theta.shape == (7,)


def test_count_loss_bias_starts_at_the_log_mean_normalised_count():
    model = _model(loss="poisson", output_activation="softplus")
    model.init_output_bias(np.array([[2.0, 0.0, 1.0, 4.0, 1.0, 1.0, 1.0],
                                     [4.0, 0.0, 1.0, 4.0, 1.0, 1.0, 1.0]]))
    bias = model.decoder[-1].bias.detach().numpy()
    assert bias[0] == pytest.approx(np.log(3.0)) and bias[3] == pytest.approx(np.log(4.0))
    assert bias[1] == pytest.approx(np.log(1e-3))  # a gene never seen is floored, not -inf


@pytest.mark.parametrize("kw,match", [
    ({"loss": "poisson"}, "softplus"),
    ({"loss": "huber"}, "loss must be"),
    ({"output_rank": -1}, "output_rank"),
])
def test_lever_settings_are_validated(kw, match):
    with pytest.raises(TrihrgeInputError, match=match):
        _model(**kw)


def test_save_load_round_trip_with_levers(tmp_path):
    model = _model(n_scales=2, loss="negative_binomial", output_activation="softplus",
                   output_rank=3)
    save_model(tmp_path / "m", model)
    loaded, cfg, _ = load_model(tmp_path / "m")
    assert cfg.loss == "negative_binomial" and cfg.output_rank == 3
    bag, _ = _inputs()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(bag), model(bag))
