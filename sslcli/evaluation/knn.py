"""Weighted k-nearest-neighbour classification on L2-normalised features.

Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018:
the k most cosine-similar training samples vote for their class with weight exp(sim / T).
"""

from __future__ import annotations

import torch


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (Q x num_classes) for each query; features must be L2-normalised."""
    if train_features.ndim != 2 or query_features.ndim != 2 or train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"knn_predict expects (N, D) and (Q, D) features, got {tuple(train_features.shape)} and {tuple(query_features.shape)}"
        )
    if len(train_features) != len(train_labels):
        raise ValueError(f"{len(train_features)} training features but {len(train_labels)} labels")
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn_predict needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    k = min(k, len(train_features))
    scores = []
    for start in range(0, len(query_features), chunk):
        sim = query_features[start:start + chunk] @ train_features.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the `k` highest scores, for each k (capped at the
    number of classes)."""
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        out[k] = float((top == labels.view(-1, 1)).any(1).float().mean())
    return out
