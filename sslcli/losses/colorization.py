"""Class-rebalanced cross-entropy over quantised colours.

Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016 (equation 2 with the weights of
equation 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy of (N, Q, ...) logits against (N, ...) bin indices or (N, Q, ...)
    target distributions (soft encoding), each pixel's loss multiplied by the weight of its target
    bin (the most probable one for a distribution, as in the paper), averaged over pixels."""
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2:
        raise ValueError(f"weighted_cross_entropy expects (N, Q, ...) logits, got {getattr(logits, 'shape', logits)}")
    soft = target.is_floating_point()
    expected = logits.shape if soft else logits.shape[:1] + logits.shape[2:]
    if target.shape != expected:
        raise ValueError(f"weighted_cross_entropy: target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)} (expected {tuple(expected)})")
    if weights.shape != (logits.shape[1],):
        raise ValueError(f"weighted_cross_entropy expects ({logits.shape[1]},) weights, got {tuple(weights.shape)}")
    if soft:
        ce = -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(1)
        target = target.argmax(1)
    else:
        ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (ce * weights.float()[target]).mean()
