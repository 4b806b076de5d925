"""Metrics shared by the binary pretext tasks (order verification, audio-visual correspondence)."""

from __future__ import annotations

import torch


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of the accuracy on in-order and on shuffled tuples (the majority class alone: 0.5)."""
    right = (logits > 0).float() == labels
    parts = [right[labels == value].float().mean() for value in (0.0, 1.0) if (labels == value).any()]
    return torch.stack(parts).mean() if parts else torch.zeros((), device=logits.device)
