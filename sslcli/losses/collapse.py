"""A collapse monitor: the spread of L2-normalised embeddings over the batch.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021 (SimSiam) tracked it: for
embeddings spread over the sphere the per-dimension std is about 1/sqrt(D); at collapse it is 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the std over the batch (unbiased) of the L2-normalised rows of `z` (N, D). Detached."""
    if z.ndim != 2:
        raise ValueError(f"embedding_std expects (N, D) embeddings, got {tuple(z.shape)}")
    if z.shape[0] < 2:
        raise ValueError(f"embedding_std needs a batch of N >= 2, got N={z.shape[0]}")
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def collapse_floor(dim: int) -> float:
    """1 / sqrt(dim): embedding_std of well-spread embeddings of that dimension; warn below a fraction of it."""
    if dim < 1:
        raise ValueError(f"collapse_floor expects a positive embedding dimension, got {dim}")
    return 1.0 / math.sqrt(dim)
