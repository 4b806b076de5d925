"""What the engine hands a method: a batch on the training device, and its views in the memory format asked for."""

from __future__ import annotations

from typing import Optional

import torch

from ..data.images import Batch
from ..methods.base import Method


def method_batch(method: Method, images: torch.Tensor, indices: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 audio: Optional[torch.Tensor] = None) -> Batch:
    """The batch a method makes views from, all on the images' device: labels only for a method
    that trains with them, so no self-supervised method can learn from labels by mistake."""
    device = images.device
    return Batch(images, labels.to(device) if method.uses_labels and labels is not None else None, indices.to(device),
                 audio.to(device) if audio is not None else None)


def channels_last(views):
    if isinstance(views, torch.Tensor):
        return views.contiguous(memory_format=torch.channels_last) if views.ndim == 4 else views
    if isinstance(views, (list, tuple)):
        return type(views)(channels_last(v) for v in views)
    if isinstance(views, dict):
        return {k: channels_last(v) for k, v in views.items()}
    return views
