"""Linear probes on cached frozen features, one classifier per layer (VISSL-style table)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .knn import topk_accuracy


def train_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Train a linear classifier on standardised features; return val top-1 and top-5.

    Features are standardised with the training split's mean and std, so one learning rate
    suits every layer; AdamW with a cosine schedule needs no tuning per layer. The classifier
    trains on `device`; the data order comes from a CPU generator, so it is the same on any device."""
    if len(train_x) != len(train_y) or len(val_x) != len(val_y):
        raise ValueError("features and labels differ in length")
    train_x, train_y, val_x, val_y = (t.to(device) for t in (train_x, train_y, val_x, val_y))
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp(min=1e-6)
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(train_x.shape[1], num_classes).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, (len(train_x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size].to(device)
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        acc = topk_accuracy(head(val_x), val_y, (1, 5))
        train_acc = topk_accuracy(head(train_x), train_y, (1,))
    return {"top1": acc[1], "top5": acc[5], "train_top1": train_acc[1]}
