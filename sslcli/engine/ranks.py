"""Training on several processes (`torchrun`): the process group the launcher describes, each
rank's share of a global batch's views, gradients averaged over ranks, and the step's numbers
agreed by all of them. Every function is a no-op in a single process.

Every rank loads the same global batch and makes the same views (one seeded generator), then
keeps its share; so N ranks see exactly the views one process sees at N times the batch, and
the data order, resume and augmentation stay those of one process."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist

from ..distributed import even, finish, is_distributed, is_main, joined, launched, rank, start, world_size
from ..errors import UserError

__all__ = ["agree", "any_rank", "average_gradients", "barrier", "check_batch", "even", "finish", "is_main", "joined",
           "launched", "on_main", "rank", "start", "world_size"]


def check_batch(batch_size: int) -> None:
    """The global batch must split evenly over the ranks."""
    world = world_size()
    if batch_size % world:
        raise UserError(f"train.batch_size {batch_size} is the global batch and must split evenly over the {world} "
                        f"processes; pass --batch-size {max(world, batch_size - batch_size % world)}")


def average_gradients(module: torch.nn.Module) -> None:
    """Average the gradients of `module` over the ranks. With losses that gather embeddings
    through torch.distributed.nn (gradients summed back to their rank), the average is the
    gradient of the global batch's loss. A parameter that has a gradient on some ranks only (a
    head whose items all fell to other ranks) counts as zero where it has none; one that has
    none on any rank keeps none, as in one process, so the optimiser leaves it alone."""
    if not is_distributed():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=params[0].device)
    dist.all_reduce(used, op=dist.ReduceOp.MAX)
    for p, anywhere in zip(params, used.tolist()):
        if anywhere and p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def agree(loss: float, metrics: dict[str, float]) -> tuple[float, dict[str, float]]:
    """The step's loss and metrics averaged over the ranks, in one collective, so every rank logs
    the same numbers and stops on the same diverged step."""
    if not is_distributed():
        return loss, metrics
    keys = sorted(metrics)
    values = torch.tensor([loss, *(metrics[k] for k in keys)], dtype=torch.float64)
    dist.all_reduce(values)
    values /= world_size()
    return float(values[0]), {k: float(v) for k, v in zip(keys, values[1:])}


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank (a stop request that reached one process alone)."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value)
    return bool(value.item() > 0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def on_main(opened: Callable[[], contextlib.AbstractContextManager]) -> Iterator[None]:
    """Enter `opened()` on rank 0 alone (the run folder and its lock) for the body, which every
    rank runs; when rank 0 is refused, every rank is (the others without a message of their own)."""
    with contextlib.ExitStack() as stack:
        failure: Optional[UserError] = None
        if is_main():
            try:
                stack.enter_context(opened())
            except UserError as exc:
                failure = exc
        if is_distributed():
            flag = torch.tensor([float(failure is not None)])
            dist.all_reduce(flag)
            if flag.item() > 0 and failure is None:
                failure = UserError("rank 0 could not open the run folder")
        if failure is not None:
            raise failure
        yield
