"""Count losses of the network: Poisson and negative binomial with a library-size offset."""

from __future__ import annotations

import math

import pytest
import torch

from napari_trihrge.model.losses import (
    count_nll,
    library_offset,
    negative_binomial_nll,
    poisson_nll,
)


def test_library_offset_is_the_log_of_the_library_over_the_target_sum():
    off = library_offset(torch.tensor([1e4, 2e4, 5e3]), 1e4)
    assert off.shape == (3, 1)
    assert off.squeeze(1).tolist() == pytest.approx([0.0, math.log(2.0), math.log(0.5)])


def test_poisson_nll_matches_a_hand_computation():
    log_mu = torch.tensor([[0.0, math.log(2.0)], [math.log(3.0), -1.0]])
    counts = torch.tensor([[1.0, 0.0], [4.0, 2.0]])
    # mu - c log mu per element: 1 - 0, 2 - 0, 3 - 4 log 3, e^-1 + 2
    hand = (1.0 + 2.0 + (3.0 - 4.0 * math.log(3.0)) + (math.exp(-1.0) + 2.0)) / 4
    assert float(poisson_nll(log_mu, counts)) == pytest.approx(hand, rel=1e-6)
    assert float(count_nll("poisson", log_mu, counts)) == pytest.approx(hand, rel=1e-6)


def test_poisson_nll_is_lowest_at_the_observed_count():
    counts = torch.full((1, 1), 5.0)
    losses = {mu: float(poisson_nll(torch.log(torch.full((1, 1), mu)), counts))
              for mu in (2.0, 5.0, 9.0)}
    assert min(losses, key=losses.get) == 5.0


def test_negative_binomial_nll_matches_a_hand_computation():
    mu, theta, c = 3.0, 2.0, 4.0
    hand = -(math.lgamma(c + theta) - math.lgamma(theta) - math.lgamma(c + 1.0)
             + theta * math.log(theta / (theta + mu)) + c * math.log(mu / (theta + mu)))
    got = negative_binomial_nll(torch.log(torch.full((1, 1), mu)), torch.full((1, 1), c),
                                torch.log(torch.tensor([theta])))
    assert float(got) == pytest.approx(hand, rel=1e-5)


def test_negative_binomial_tends_to_poisson_for_a_large_theta():
    log_mu = torch.log(torch.tensor([[0.5, 4.0, 10.0]]))
    counts = torch.tensor([[0.0, 3.0, 12.0]])
    full_poisson = poisson_nll(log_mu, counts) + torch.lgamma(counts + 1).mean()
    nb = negative_binomial_nll(log_mu, counts, torch.full((3,), math.log(1e7)))
    assert float(nb) == pytest.approx(float(full_poisson), abs=1e-3)


def test_count_nll_rejects_unknown_losses_and_missing_theta():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="not a count loss"):
        count_nll("mse", x, x)
    with pytest.raises(ValueError, match="log_theta"):
        count_nll("negative_binomial", x, x)
