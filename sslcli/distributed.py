"""Thin helpers over torch.distributed that degrade to single-process behaviour: joining the
process group a launcher (torchrun) describes, and the collectives the losses, the engine and
the evaluation commands use."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launched() -> bool:
    """Whether a launcher (torchrun, srun with torchrun's variables) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str) -> None:
    """Join the process group of a launched run: NCCL on CUDA (this rank's GPU: LOCAL_RANK), gloo
    on the CPU. A no-op when not launched or already joined."""
    if not launched() or dist.is_initialized():
        return
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def finish() -> None:
    """Leave the process group (at the end of a launched command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def joined(device: str) -> Iterator[None]:
    """The body in the process group of a launched command (`start`, then `finish` however it ends)."""
    start(device)
    try:
        yield
    finally:
        finish()


def is_main() -> bool:
    """Whether this process writes files and speaks for the run: rank 0, or the only process."""
    return rank() == 0


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable, e.g. CPU tensors of any size), in rank order; `[obj]` in one
    process."""
    if not is_distributed():
        return [obj]
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


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
