"""Feature extraction from a frozen backbone over a data split."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import eval_view
from ..data.sources import Split
from ..engine import autocast, autocast_dtype


@torch.no_grad()
def extract_features(
    model: nn.Module,
    split: Split,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "auto",
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features N x D float32 on CPU, labels N) of every image in `split`, in order."""
    model.eval().to(device)
    dtype = autocast_dtype(precision, device)
    feats, labels = [], []
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(len(split), start + batch_size))
        if split.images is not None:
            images = split.images[idx]
        else:
            images = torch.stack([split[i][0] for i in idx.tolist()])
        x = eval_view(images.to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            f = model(x)
        feats.append(f.float().flatten(1).cpu())
        labels.append(split.labels[idx])
    out = torch.cat(feats)
    return (F.normalize(out, dim=1) if normalize else out), torch.cat(labels)
