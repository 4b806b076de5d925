"""VICReg: variance, invariance and covariance regularisation of two views' embeddings.

Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", ICLR 2022.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _variance(z: torch.Tensor, eps: float) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, parts): the weighted sum, and the unweighted 'invariance', 'variance', 'covariance' terms (detached).

    invariance: mean squared error between z1 and z2. variance: for each branch, the mean over
    dimensions of relu(1 - sqrt(var + eps)), var unbiased over the batch; the two branches averaged,
    as in the authors' code, for which the weights 25/25/1 were tuned (the paper's equation sums
    them, which doubles this term's pull).
    covariance: for each branch, the sum of the squared off-diagonal entries of the unbiased (D, D)
    covariance matrix, divided by D; the two branches summed. Statistics are those of the batch given (under torchrun the
    method passes the global batch, gathered with gradients).
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"vicreg_loss expects two (N, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"vicreg_loss needs a batch of N >= 2 for the unbiased variance, got N={z1.shape[0]}")
    if eps <= 0:
        raise ValueError(f"vicreg_loss eps must be positive, got {eps}")
    a, b = z1.float(), z2.float()
    invariance = F.mse_loss(a, b)
    variance = (_variance(a, eps) + _variance(b, eps)) / 2
    covariance = _covariance(a) + _covariance(b)
    total = invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    parts = {"invariance": invariance.detach(), "variance": variance.detach(), "covariance": covariance.detach()}
    return total, parts
