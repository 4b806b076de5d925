"""BYOL's regression loss between the online prediction and the target projection.

Grill, Strub, Altché, Tallec, Richemond, Buchatskaya, Doersch, Pires, Guo, Azar, Piot, Kavukcuoglu,
Munos & Valko, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of 2 - 2 * cos(prediction_i, target_i), between 0 (aligned) and 4 (opposite).

    `prediction` (N, D) comes from the online network's predictor, `target` (N, D) from the
    momentum (target) network. The target is detached here: BYOL's target gets no gradient, it
    moves only by the exponential moving average. Symmetrise by calling it for both view orders.
    """
    if prediction.ndim != 2 or prediction.shape != target.shape:
        raise ValueError(
            f"byol_loss expects two (N, D) tensors of equal shape, got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    p = F.normalize(prediction.float(), dim=1)
    t = F.normalize(target.detach().float(), dim=1)
    return (2 - 2 * (p * t).sum(dim=1)).mean()
