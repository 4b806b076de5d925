"""Optimisers and the learning-rate schedule: SGD, AdamW, LARS; batch-scaled learning rate;
linear warm-up then cosine."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..recipe import Recipe


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017, "Large Batch Training of
    Convolutional Networks"). Groups with `lars=False` (biases, norms) get plain SGD."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if group["lars"]:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    ratio = torch.where((p_norm > 0) & (g_norm > 0), group["trust"] * p_norm / g_norm, torch.ones_like(p_norm))
                    grad.mul_(ratio)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])


def scaled_lr(recipe: Recipe) -> float:
    o, batch = recipe.optim, recipe.train.batch_size
    factor = {"linear": batch / 256, "sqrt": math.sqrt(batch / 256), "none": 1.0}[o.lr_scaling]
    return o.lr * factor


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    o = recipe.optim
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    lr = scaled_lr(recipe)
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(o.momentum, 0.999))
    groups[1]["lars"] = False
    return LARS(groups, lr=lr, momentum=o.momentum, trust=o.trust)


def lr_factor(step: int, total: int, warmup: int, schedule: str, final: float) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine to `final` (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
