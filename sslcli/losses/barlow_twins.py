"""Barlow Twins: push the cross-correlation of two views' embeddings towards the identity.

Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021.
"""

from __future__ import annotations

import torch

_BN_EPS = 1e-5


def _check(z1: torch.Tensor, z2: torch.Tensor, name: str) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"{name} expects two (N, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"{name} needs a batch of N >= 2 to standardise over, got N={z1.shape[0]}")


def _standardise(z: torch.Tensor) -> torch.Tensor:
    # BatchNorm without affine in training mode: biased variance, eps inside the sqrt.
    z = z.float()
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + _BN_EPS)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """(D, D) matrix C_ij = mean over the batch of z1n[:, i] * z2n[:, j], each dimension standardised over the batch.

    The statistics are those of the batch given: under torchrun the method passes the global batch,
    gathered with gradients, as the paper's code does with its all-reduced C.
    """
    _check(z1, z2, "cross_correlation")
    return _standardise(z1).T @ _standardise(z2) / z1.shape[0]


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 5e-3) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambda_offdiag * sum_{i != j} C_ij^2, with C = cross_correlation(z1, z2)."""
    _check(z1, z2, "barlow_twins_loss")
    c = cross_correlation(z1, z2)
    diagonal = torch.diagonal(c)
    on = (1 - diagonal).pow(2).sum()
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + lambda_offdiag * off
