"""InfoNCE against a shared bank of negatives, as MoCo and PIRL use it.

van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding", arXiv 2018
(the InfoNCE objective). He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020, and Chen, Fan, Girshick & He, "Improved Baselines with Momentum
Contrastive Learning", arXiv 2020 (MoCo v2, temperature 0.2): the negatives are a queue of keys from a
momentum encoder. Misra & van der Maaten, "Self-Supervised Learning of Pretext-Invariant
Representations", CVPR 2020 (PIRL): the negatives are drawn from a memory bank. PIRL's paper writes
its objective as binary NCE; the softmax form here is the usual reimplementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce_logits(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """(N, 1+K) cosine similarities: column 0 is query i against positive i, columns 1.. against each negative.

    `query` and `positive` are (N, D); `negatives` is one (K, D) bank shared by every row. Rows are
    L2-normalised here. Nothing is detached: pass detached `positive`/`negatives` (MoCo's keys, a
    memory bank) to make them constants.
    """
    if query.ndim != 2 or positive.shape != query.shape:
        raise ValueError(
            f"info_nce expects query and positive of one (N, D) shape, got {tuple(query.shape)} and {tuple(positive.shape)}"
        )
    if negatives.ndim != 2 or negatives.shape[1] != query.shape[1]:
        raise ValueError(
            f"info_nce expects negatives of shape (K, D) with D={query.shape[1]}, got {tuple(negatives.shape)}"
        )
    if negatives.shape[0] == 0:
        raise ValueError("info_nce needs at least one negative, got a (0, D) bank")
    q = F.normalize(query.float(), dim=1)
    p = F.normalize(positive.float(), dim=1)
    n = F.normalize(negatives.float(), dim=1)
    return torch.cat([(q * p).sum(dim=1, keepdim=True), q @ n.T], dim=1)


def info_nce(
    query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """Mean cross-entropy of `info_nce_logits / temperature` against label 0 (the positive).

    Per row: -log(exp(s+/T) / (exp(s+/T) + sum_k exp(s_k/T))), with s the cosine similarities.
    """
    if temperature <= 0:
        raise ValueError(f"info_nce temperature must be positive, got {temperature}")
    logits = info_nce_logits(query, positive, negatives) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)
