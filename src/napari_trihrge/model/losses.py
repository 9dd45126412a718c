"""Training losses of the network: MSE on log-normalised expression, or a count likelihood.

The count losses read the network's output (before its activation) as ``eta``, the log of the
expected normalised count of a gene (counts per ``target_sum`` of the spot's library). With the
spot's library size ``L`` (its total counts over every gene) as offset, the expected raw count is
``mu = exp(eta + log(L / target_sum))``:

* ``poisson``: ``mu - c * log(mu)`` per spot and gene (the negative log-likelihood without the
  ``log(c!)`` term, which does not depend on the network);
* ``negative_binomial``: the full negative log-likelihood with a per-gene inverse dispersion
  ``theta`` (``variance = mu + mu^2 / theta``).

Both are averaged over spots and genes, as the MSE is.
"""

from __future__ import annotations

import torch


def library_offset(library_size: torch.Tensor, target_sum: float) -> torch.Tensor:
    """``log(L / target_sum)`` per spot (N,) -> (N, 1), the offset of the log-rate."""
    return torch.log(library_size / target_sum).unsqueeze(1)


def poisson_nll(log_mu: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean over elements of ``mu - c * log(mu)`` (``log_mu`` and ``counts`` (N, G))."""
    return (torch.exp(log_mu) - counts * log_mu).mean()


def negative_binomial_nll(log_mu: torch.Tensor, counts: torch.Tensor,
                          log_theta: torch.Tensor) -> torch.Tensor:
    """Mean over elements of the negative binomial negative log-likelihood.

    ``log_mu``, ``counts`` (N, G); ``log_theta`` (G,), the log inverse dispersion per gene.
    Computed in float64: ``lgamma(c + theta) - lgamma(theta)`` cancels badly in float32 once
    theta is large.
    """
    dtype = log_mu.dtype
    log_mu, counts, log_theta = log_mu.double(), counts.double(), log_theta.double()
    theta = torch.exp(log_theta)
    log_theta_mu = torch.logaddexp(log_theta.expand_as(log_mu), log_mu)  # log(theta + mu)
    ll = (torch.lgamma(counts + theta) - torch.lgamma(theta) - torch.lgamma(counts + 1.0)
          + theta * (log_theta - log_theta_mu) + counts * (log_mu - log_theta_mu))
    return -ll.mean().to(dtype)


def count_nll(kind: str, log_mu: torch.Tensor, counts: torch.Tensor,
              log_theta: torch.Tensor | None = None) -> torch.Tensor:
    """The count loss ``kind`` ('poisson' or 'negative_binomial') of expected log counts."""
    if kind == "poisson":
        return poisson_nll(log_mu, counts)
    if kind == "negative_binomial":
        if log_theta is None:
            raise ValueError("the negative binomial loss needs log_theta")
        return negative_binomial_nll(log_mu, counts, log_theta)
    raise ValueError(f"not a count loss: {kind!r}")


__all__ = ["library_offset", "poisson_nll", "negative_binomial_nll", "count_nll"]
