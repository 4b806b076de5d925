"""Device and precision: which device a command runs on, the autocast dtype for a precision
setting, and peak memory. Shared by the engine and evaluation, so neither imports the other."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .errors import UserError


def select_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N as a torch device; anything else is refused naming the choices."""
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"--device {name!r} is unknown; use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but this machine has no usable CUDA GPU; use --device cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for a precision setting, or None for full fp32.

    `auto` is bf16 on a CPU with bf16 instructions (training included: the one convolution case
    its oneDNN kernels get wrong is guarded, see `guard_small_maps`), fp32 on one without, and bf16
    or else fp16 on CUDA."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    if precision == "fp16" and device.type == "cpu":
        raise UserError("train.precision fp16 needs a CUDA GPU; use bf16, fp32 or auto on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this run: the CUDA allocator's high-water mark on a GPU, else the process's
    peak resident set (which includes the Python and library footprint)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _guarded(base: type) -> type:
    """`base` (a Conv2d class) whose forward leaves CPU bf16 autocast for an input map 1 px high or wide."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and min(x.shape[-2:]) <= 1 and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return base.forward(self, x.float())
        return base.forward(self, x)

    return type(f"SmallMapGuarded{base.__name__}", (base,), {"forward": forward, "__module__": __name__})


_GUARDED: dict[type, type] = {}


def guard_small_maps(model: torch.nn.Module) -> int:
    """Make every strided convolution wider than 1x1 in `model` run in fp32 when its input map is
    1 px high or wide under CPU bf16 autocast, and return how many it found: oneDNN's bf16 weight
    gradient for that one case is garbage (often non-finite), while every larger map is right to
    bf16 rounding. Only the module's class changes: weights, state_dict and copies stay as they are."""
    count = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Conv2d) or type(module) in _GUARDED.values():
            continue
        if max(module.stride) > 1 and max(module.kernel_size) > 1:
            cls = type(module)
            module.__class__ = _GUARDED.setdefault(cls, _guarded(cls))
            count += 1
    return count
