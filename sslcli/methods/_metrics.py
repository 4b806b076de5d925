"""Metrics shared by the binary pretext tasks (order verification, audio-visual correspondence)."""

from __future__ import annotations

import torch


def answer_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(right on label 0, items of label 0, right on label 1, items of label 1): the counts both
    accuracies come from, which sum over processes."""
    right = ((logits > 0).float() == labels).float()
    return torch.stack([right[labels == 0].sum(), (labels == 0).sum().float(), right[labels == 1].sum(),
                        (labels == 1).sum().float()])


def accuracies(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy, balanced accuracy) from `answer_counts`; a label without items counts for
    neither part of the balanced one (the majority class alone: 0.5)."""
    right0, n0, right1, n1 = counts.unbind()
    accuracy = (right0 + right1) / (n0 + n1).clamp(min=1)
    parts = [right / n for right, n in ((right0, n0), (right1, n1)) if n > 0]
    return accuracy, (torch.stack(parts).mean() if parts else torch.zeros((), device=counts.device))


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of the accuracy on in-order and on shuffled tuples (the majority class alone: 0.5)."""
    return accuracies(answer_counts(logits, labels))[1]
