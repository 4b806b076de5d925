"""Pure loss functions. Inputs are checked with a clear ValueError; nothing here holds state."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = True) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
    Row i of `z1` and row i of `z2` embed two views of one image. Each of the 2N embeddings is
    classified against every other one (cosine similarity / temperature), its partner being the
    positive and all 2N-2 others the negatives. With `gather` and torch.distributed running, the
    negatives are the embeddings of every rank (gathered with their gradients).
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"nt_xent expects two (N, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"nt_xent temperature must be positive, got {temperature}")
    n = z1.shape[0]
    q1, q2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    k1, k2 = (distributed.gather_with_grad(q1), distributed.gather_with_grad(q2)) if gather else (q1, q2)
    total = k1.shape[0]
    offset = n * distributed.rank() if gather else 0
    queries = torch.cat([q1, q2])
    keys = torch.cat([k1, k2])
    logits = queries @ keys.T / temperature
    idx = torch.arange(n, device=z1.device) + offset
    self_idx = torch.cat([idx, idx + total])
    positive = torch.cat([idx + total, idx])
    logits = logits.masked_fill(F.one_hot(self_idx, 2 * total).bool(), float("-inf"))
    return F.cross_entropy(logits, positive)
