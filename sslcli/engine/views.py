"""What the engine hands a method besides the batch's images, and the memory format of its views."""

from __future__ import annotations

from typing import Optional

import torch

from ..methods.base import Method


def extras(method: Method, indices: torch.Tensor, audio: Optional[torch.Tensor]) -> dict:
    """The `indices` keyword for methods that keep per-image state (a memory bank), `audio` for
    methods that hear clips; nothing else."""
    return {**({"indices": indices} if method.uses_indices else {}), **({"audio": audio} if audio is not None else {})}


def channels_last(views):
    if isinstance(views, torch.Tensor):
        return views.contiguous(memory_format=torch.channels_last) if views.ndim == 4 else views
    if isinstance(views, (list, tuple)):
        return type(views)(channels_last(v) for v in views)
    if isinstance(views, dict):
        return {k: channels_last(v) for k, v in views.items()}
    return views
