"""The data order: a seeded permutation per epoch, batches from a step on (for exact resume)."""

from __future__ import annotations

from typing import Iterator

import torch

from ..data.images import Batch, Split, load_batches


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the training set for `epoch`: a pure function of (seed, epoch), so a
    resumed run replays exactly the same order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def iterate_batches(split: Split, order: torch.Tensor, batch_size: int, start: int, workers: int) -> Iterator[Batch]:
    """(uint8 images, labels, indices) batches following `order` (full batches only), from batch
    index `start`; undecodable images are left out of their batch (see `load_batches`)."""
    steps = len(order) // batch_size
    return load_batches(split, [order[i * batch_size:(i + 1) * batch_size] for i in range(start, steps)], workers)
