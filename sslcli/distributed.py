"""Thin helpers over torch.distributed that degrade to single-process behaviour."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' `x` concatenated along dim 0, with gradients flowing back to each rank's own part."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over all ranks, in place, and returned; a no-op without torch.distributed. No gradient."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """`t` maximised element-wise over all ranks, in place, and returned; a no-op without torch.distributed."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' `x` concatenated along dim 0, rank order, without gradients (MoCo's keys for
    the queue); `x` itself without torch.distributed."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
