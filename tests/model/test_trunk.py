"""The fused trunk equals the network's own last hidden layer (eval mode) to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_trihrge.model.network import ModelConfig, TriHRGENet
from napari_trihrge.model.predict import predict_last_hidden
from napari_trihrge.model.trunk import FusedTrunk, trunk_last_hidden
from napari_trihrge.neighbours import idw_apply

N_GENES, IN_DIM, N_SPOTS, K = 9, 12, 40, 5
#: float32 rounding of a few hundred products, on hidden values of order 1-10
TOL = 2e-5


def _trained_like(n_scales, neighbour, skip=False, rank=0, seed=0):
    """A network whose every folded part differs from the identity: standardisation, scale
    embedding, BatchNorm running statistics and affine weights."""
    torch.manual_seed(seed)
    net = TriHRGENet(ModelConfig(
        in_dim=IN_DIM if n_scales else 0, n_genes=N_GENES, n_scales=n_scales,
        hidden_dim=32, attention_dim=16, decoder_dims=(24, 48), neighbour_input=neighbour,
        neighbour_skip=skip, output_rank=rank))
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 2.0)
                m.running_var.uniform_(0.2, 3.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
        net.set_standardization(
            rng.normal(3.0, 2.0, (200, n_scales, IN_DIM)) if n_scales else None,
            rng.gamma(2.0, 1.0, (200, N_GENES)) if neighbour else None)
    return net.eval()


def _inputs(n_scales, n=300, seed=1):
    rng = np.random.default_rng(seed)
    feats = (rng.normal(3.0, 2.0, (n, n_scales, IN_DIM)).astype(np.float32)
             if n_scales else None)
    spots = rng.gamma(2.0, 1.0, (N_SPOTS, N_GENES)).astype(np.float32)
    idx = rng.integers(0, N_SPOTS, (n, K)).astype(np.int32)
    w = rng.random((n, K)).astype(np.float32)
    w /= w.sum(axis=1, keepdims=True)
    return feats, spots, idx, w


def _reference(net, feats, nb):
    with torch.inference_mode():
        return net.last_hidden(None if feats is None else torch.from_numpy(feats),
                               None if nb is None else torch.from_numpy(nb)).numpy()


@pytest.mark.parametrize("n_scales,neighbour,skip,rank", [
    (3, True, True, 0), (3, True, False, 0), (2, False, False, 0), (1, False, False, 0),
    (0, True, True, 0), (3, True, True, 4), (2, False, False, 3)])
def test_fused_trunk_equals_the_networks_last_hidden(n_scales, neighbour, skip, rank):
    net = _trained_like(n_scales, neighbour, skip, rank)
    feats, spots, idx, w = _inputs(n_scales)
    nb = idw_apply(idx, w, spots) if neighbour else None
    reference = _reference(net, feats, nb)
    assert reference.shape == (300, rank or 48)
    assert reference.std() > 0.1  # not a dead layer
    trunk = FusedTrunk(net)
    knn = (idx, w) if neighbour else None
    tables = [trunk.neighbour_table(spots)] if neighbour else None
    # from the kNN weights (no interpolation built), in batches smaller than the locations
    fused = trunk_last_hidden([trunk], feats, knn=knn, tables=tables, batch_size=128)[0]
    np.testing.assert_allclose(fused, reference, rtol=0, atol=TOL)
    # from the neighbour matrix
    direct = trunk_last_hidden([trunk], feats, neighbour=nb)[0]
    np.testing.assert_allclose(direct, reference, rtol=0, atol=TOL)
    np.testing.assert_allclose(predict_last_hidden([net], feats, nb, device="cpu")[0],
                               reference, rtol=0, atol=TOL)


def test_fused_trunk_is_exact_when_the_knn_weights_do_not_sum_to_one():
    net = _trained_like(3, True, skip=True)
    feats, spots, idx, w = _inputs(3)
    w = w * np.linspace(0.5, 1.5, len(w), dtype=np.float32)[:, None]  # any weights
    trunk = FusedTrunk(net)
    fused = trunk_last_hidden([trunk], feats, knn=(idx, w), tables=[trunk.neighbour_table(spots)])
    np.testing.assert_allclose(fused[0], _reference(net, feats, idw_apply(idx, w, spots)),
                               rtol=0, atol=TOL)


def test_several_networks_and_the_network_is_left_unchanged():
    nets = [_trained_like(3, True, skip=True, seed=s) for s in (0, 1)]
    nets[1].train()  # the trunk takes eval-mode behaviour; the network keeps its mode
    feats, spots, idx, w = _inputs(3)
    before = [{k: v.clone() for k, v in n.state_dict().items()} for n in nets]
    trunks = [FusedTrunk(n) for n in nets]
    fused = trunk_last_hidden(trunks, feats, knn=(idx, w),
                              tables=[t.neighbour_table(spots) for t in trunks])
    assert fused.shape == (2, 300, 48)
    assert nets[1].training
    nb = idw_apply(idx, w, spots)
    for i, net in enumerate(nets):
        assert all(torch.equal(v, before[i][k]) for k, v in net.state_dict().items())
        np.testing.assert_allclose(fused[i], _reference(net.eval(), feats, nb),
                                   rtol=0, atol=TOL)
    assert np.abs(fused[0] - fused[1]).max() > 0.1  # each network its own weights
