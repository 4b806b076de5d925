"""Thin helpers over torch.distributed that degrade to single-process behaviour."""

from __future__ import annotations

from typing import Any

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
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated for a functional collective that gloo's autograd lacks
        warnings.simplefilter("ignore", FutureWarning)
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


def share(views: Any, n: int) -> Any:
    """This rank's share of `views` made for a global batch of `n` items: a tensor whose first
    dimension is k*n (k views stacked) is cut into k blocks of n, and each block into equal rank
    parts; anything else is kept whole."""
    if not is_distributed():
        return views
    if isinstance(views, torch.Tensor):
        if views.ndim == 0 or views.shape[0] % n or n % world_size():
            return views
        part, r = n // world_size(), rank()
        blocks = views.reshape(views.shape[0] // n, n, *views.shape[1:])[:, r * part:(r + 1) * part]
        return blocks.reshape(-1, *views.shape[1:]).contiguous(memory_format=_format(views))
    if isinstance(views, (list, tuple)):
        return type(views)(share(v, n) for v in views)
    if isinstance(views, dict):
        return {k: share(v, n) for k, v in views.items()}
    return views


def _format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def even(n: int) -> int:
    """The largest item count not above `n` that splits evenly over the ranks (a batch that lost
    undecodable images is cut the same way on every rank, so no rank waits for another)."""
    return n - n % world_size()


def share_items(t: torch.Tensor, n: int) -> torch.Tensor:
    """This rank's share of `t`, which holds k consecutive rows per item of a global batch of `n`
    (item-major: tiles or patches flattened after their image)."""
    if not is_distributed():
        return t
    part, r = n // world_size(), rank()
    return t.reshape(n, t.shape[0] // n, *t.shape[1:])[r * part:(r + 1) * part].reshape(-1, *t.shape[1:])
