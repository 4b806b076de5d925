"""Feature extraction from a frozen backbone over a data split: pooled final features, or the
feature maps of named intermediate layers, each pooled to a few thousand dimensions at most."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..data.augment import eval_view
from ..data.images import Split, load_batches
from ..device import autocast, autocast_dtype
from ..errors import UserError, did_you_mean

MAX_LAYER_DIMS = 4096
_POOL_SIDES = (8, 6, 4, 3, 2, 1)


@dataclass(frozen=True)
class Layer:
    """One probe-able layer: its display name, timm's feature index, channels and stride."""

    name: str
    index: int
    channels: int
    reduction: int


def model_layers(model: nn.Module) -> list[Layer]:
    """The layers timm reports for `model` (feature_info); a ResNet's act1 is shown as 'stem'."""
    info = getattr(model, "feature_info", None)
    if not info:
        return []
    entries = info if isinstance(info, list) else [info.get_dicts()[i] for i in range(len(info))]
    layers = []
    for i, entry in enumerate(entries):
        module = entry["module"]
        name = "stem" if i == 0 and module in ("act1", "bn1", "stem") else module
        layers.append(Layer(name, i, entry["num_chs"], entry["reduction"]))
    return layers


def select_layers(model: nn.Module, spec: str) -> list[Layer | None]:
    """Parse `--layers`: 'last' (the pooled output, as kNN sees it), 'all', or names 'layer3,layer4'.
    None stands for the pooled final output."""
    spec = spec.strip()
    if spec == "last":
        return [None]
    layers = model_layers(model)
    if not layers:
        raise UserError("this backbone reports no intermediate layers to timm; use --layers last")
    if spec == "all":
        return list(layers)
    by_name = {layer.name: layer for layer in layers}
    by_name.update({"act1": by_name.get("stem")} if "stem" in by_name else {})
    chosen: list[Layer | None] = []
    for name in (n.strip() for n in spec.split(",") if n.strip()):
        if name == "last":
            chosen.append(None)
        elif name in by_name:
            chosen.append(by_name[name])
        else:
            names = [layer.name for layer in layers]
            raise UserError(f"unknown layer '{name}'{did_you_mean(name, names)}; this backbone has: last, {', '.join(names)}")
    return chosen


def pool_side(channels: int, height: int, max_dims: int = MAX_LAYER_DIMS) -> int:
    """The largest pooled grid side whose channels x side^2 stays within `max_dims`."""
    for side in _POOL_SIDES:
        if side <= height and channels * side * side <= max_dims:
            return side
    return 1


@torch.no_grad()
def extract_features(
    model: nn.Module,
    split: Split,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "auto",
    normalize: bool = True,
    layers: list[Layer | None] | None = None,
    kept: list[torch.Tensor] | None = None,
    front_end=None,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of every decodable image (or clip) in `split`, in order, and its labels. A clip's
    feature is the mean of its frames' features (the frames its split's plan names).

    Without `layers`: the pooled output (N x D float32 on CPU, L2-normalised by default).
    With `layers`: a dict from layer name ('last' for None) to N x D features, one forward pass.
    Items that cannot be decoded are left out; pass a list as `kept` to receive the indices
    of the items that were used. With a `front_end` (an audio tower), the model hears the sound
    around each frame (the split must be read with sound) instead of seeing the frame."""
    if isinstance(model, nn.Module):  # a plain callable (e.g. a classifier's forward) is used as given
        model.eval().to(device)
    dtype = autocast_dtype(precision, device)
    wanted = layers if layers is not None else [None]
    indices = sorted({layer.index for layer in wanted if layer is not None})
    step = max(1, batch_size // (split.plan.count if split.kind == "video" else 1))  # clips: frames per batch
    chunks = [torch.arange(start, min(len(split), start + step)) for start in range(0, len(split), step)]
    # under torchrun each rank takes every world-th chunk, and all ranks receive every chunk's features
    mine = list(range(distributed.rank(), len(chunks), distributed.world_size()))
    done, failure = [], None
    try:
        for number, batch in zip(mine, load_batches(split, [chunks[i] for i in mine])):
            part = _chunk_features(model, batch, device, dtype, wanted, indices, front_end)
            if part is not None:
                done.append((number, part))
    except UserError as exc:  # the data refused on one rank (too many undecodable items) is refused on all
        if not distributed.is_distributed():
            raise
        failure = exc
    gathered = distributed.gather_objects((done, failure))
    for _, exc in gathered:
        if exc is not None:
            raise exc
    parts = sorted((part for rank_parts, _ in gathered for part in rank_parts), key=lambda p: p[0])
    names = [("last" if layer is None else layer.name) for layer in wanted]
    if kept is not None:
        kept.extend(idx for _, (_, _, idx) in parts)
    feats = {name: torch.cat([f[name] for _, (f, _, _) in parts]) for name in names}
    labels = torch.cat([y for _, (_, y, _) in parts])
    if normalize:
        feats = {name: F.normalize(f, dim=1) for name, f in feats.items()}
    if layers is None:
        return feats["last"], labels
    return feats, labels


def _chunk_features(model, batch, device: torch.device, dtype, wanted: list, indices: list[int],
                    front_end) -> Optional[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]:
    """One batch's features per wanted layer (CPU float32), its labels and its indices; None when
    no item of the batch could be decoded."""
    images, batch_labels, idx = batch
    if not len(images):
        return None
    out: dict[str, torch.Tensor] = {}
    per_item = images.shape[1] if images.ndim == 5 else 1
    if front_end is not None:
        x = front_end(batch.audio.to(device).flatten(0, 1))
    else:
        x = eval_view(images.to(device).flatten(0, images.ndim - 4))
    x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, dtype):
        if indices:
            final, maps = model.forward_intermediates(x, indices=indices)
            final = model.forward_head(final, pre_logits=True) if hasattr(model, "forward_head") else final
            by_index = dict(zip(indices, maps))
        else:
            final, by_index = model(x), {}
    for layer in wanted:
        if layer is None:
            f = final.float().flatten(1)
        else:
            fmap = by_index[layer.index].float()
            f = F.adaptive_avg_pool2d(fmap, pool_side(fmap.shape[1], fmap.shape[2])).flatten(1)
        out["last" if layer is None else layer.name] = f.view(-1, per_item, f.shape[1]).mean(1).cpu()
    return out, batch_labels, idx
