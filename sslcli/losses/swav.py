"""SwAV: online codes from Sinkhorn-Knopp, and the swapped-prediction loss.

Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020. The equal-partition codes come from a few
Sinkhorn-Knopp iterations (Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal
Transport", NeurIPS 2013) over the prototype scores of the whole batch, across all ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import distributed


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes Q (B, K) for prototype scores (B, K): every row sums to 1, every prototype gets ~B/K.

    Q = exp(scores / epsilon), then alternately each prototype (column) is scaled to total mass 1/K
    and each sample (row) to 1/B, ending with the row step, and Q * B is returned. B is the batch of
    all ranks: under torch.distributed the column sums, the total and the max are all-reduced, so
    the codes equal those of one big batch. Computed without gradient, in float64 (float32 on MPS);
    returned as float32.
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp expects prototype scores of shape (B, K), got {tuple(scores.shape)}")
    if epsilon <= 0:
        raise ValueError(f"sinkhorn_knopp epsilon must be positive, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"sinkhorn_knopp needs at least one iteration, got {iterations}")
    dtype = torch.float32 if scores.device.type == "mps" else torch.float64
    tiny = torch.finfo(dtype).tiny
    s = scores.detach().to(dtype) / epsilon
    # One max for every rank: a per-rank shift would scale the ranks' rows differently.
    s = s - distributed.all_reduce_max(s.max().reshape(1))
    q = torch.exp(s)
    k = q.shape[1]
    total_and_batch = distributed.all_reduce_sum(torch.stack([q.sum(), q.new_tensor(float(q.shape[0]))]))
    total, batch = total_and_batch[0], total_and_batch[1]
    q = q / total.clamp_min(tiny)
    for _ in range(iterations):
        columns = distributed.all_reduce_sum(q.sum(dim=0, keepdim=True))
        q = q / columns.clamp_min(tiny) / k
        q = q / q.sum(dim=1, keepdim=True).clamp_min(tiny) / batch
    return (q * batch).float()


def swav_loss(
    scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor], temperature: float = 0.1
) -> torch.Tensor:
    """Swapped prediction: each crop with a code predicts it from every other crop's scores.

    `scores` holds one (B, K) prototype-score tensor per crop, the large crops first; `codes` holds
    the (B, K) Sinkhorn codes of the first len(codes) crops (SwAV: the two large ones). The loss is
    the mean, over each coded crop i and each other crop j != i, of the batch-mean cross-entropy
    -sum_k q_i[k] * log_softmax(scores_j / temperature)[k]. Codes are targets and are detached.
    """
    scores, codes = list(scores), list(codes)
    if len(scores) < 2:
        raise ValueError(f"swav_loss needs the scores of at least 2 crops, got {len(scores)}")
    if not 1 <= len(codes) <= len(scores):
        raise ValueError(f"swav_loss needs between 1 and {len(scores)} codes (one per large crop), got {len(codes)}")
    if temperature <= 0:
        raise ValueError(f"swav_loss temperature must be positive, got {temperature}")
    shape = scores[0].shape
    if len(shape) != 2:
        raise ValueError(f"swav_loss expects (B, K) prototype scores, got {tuple(shape)}")
    for name, group in (("scores", scores), ("codes", codes)):
        for i, t in enumerate(group):
            if t.shape != shape:
                raise ValueError(f"swav_loss expects every tensor of shape (B, K)={tuple(shape)}, {name}[{i}] is {tuple(t.shape)}")
    log_p = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    terms = []
    for i, q in enumerate(codes):
        q = q.detach().float()
        for j in range(len(scores)):
            if j != i:
                terms.append(-(q * log_p[j]).sum(dim=1).mean())
    return torch.stack(terms).mean()


def code_entropy(codes: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the (B, K) soft codes' rows over ln K: 0 when every image is assigned to one
    prototype, 1 when every code is uniform. Near 1, the prototypes no longer tell images apart
    and the swapped prediction has nothing to teach (SwAV's own collapse, which can leave the
    embeddings spread out)."""
    if codes.ndim != 2 or codes.shape[1] < 2:
        raise ValueError(f"code_entropy expects (B, K) codes with K >= 2, got {tuple(codes.shape)}")
    # Rows are taken to be distributions (Sinkhorn's are): checking the values would cost a device
    # sync every training step.
    q = codes.float()
    entropy = -(q * q.clamp_min(1e-30).log()).sum(1)
    return entropy.mean() / math.log(q.shape[1])
