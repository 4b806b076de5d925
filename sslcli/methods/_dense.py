"""Dense prediction on top of any timm backbone, shared by the pixel-level pretext tasks
(colourisation, inpainting): the backbone's last feature maps fused by a light decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..recipe import MethodConfig, option


def dense_layers(backbone: nn.Module, count: int = 3) -> tuple[list[int], list[int]]:
    """timm feature indices and channels of the backbone's last `count` stages (for a ResNet and
    the default 3: layer2, layer3, layer4, so the task's signal reaches every stage directly; 1
    feeds the decoder only the last stage, as Zhang et al. and Pathak et al. do)."""
    info = getattr(backbone, "feature_info", None)
    if not info or not hasattr(backbone, "forward_intermediates"):
        raise UserError(f"backbone '{type(backbone).__name__}' exposes no intermediate feature maps to timm; "
                        f"pixel-level tasks need one that does (ResNets, ConvNeXts, ViTs, ...)")
    entries = list(info) if isinstance(info, list) else [info.get_dicts()[i] for i in range(len(info))]
    if not 1 <= count <= len(entries):
        raise UserError(f"decoder_stages is {count} but backbone '{type(backbone).__name__}' has {len(entries)} "
                        f"feature stages; set method.decoder_stages between 1 and {len(entries)}")
    chosen = list(range(len(entries)))[-count:]
    return chosen, [entries[i]["num_chs"] for i in chosen]


@dataclass
class DenseConfig(MethodConfig):
    """Keys of the dense decoder, shared by the pixel-level tasks."""

    decoder_width: int = option(128, "channels of the light dense decoder", min=1)
    decoder_stages: int = option(
        3, "backbone stages the decoder reads, counted from the last (3: layer2-4 of a ResNet; 1: only the last)", min=1)
    decoder_depth: int = option(
        1, "3x3 convolution blocks after the fusion; a deeper decoder takes on the pixel-specific work, "
           "leaving the backbone's features more abstract (He et al. 2022, MAE)", min=1)


class LightDecoder(nn.Module):
    """Each feature map goes through a 1x1 convolution to `width` channels and is upsampled to the
    finest map's grid; the sum passes `depth` blocks of 3x3 convolution, BN and ReLU and a 1x1
    convolution to `out_channels`, then is resized to the requested output side."""

    def __init__(self, backbone: nn.Module, out_channels: int, width: int = 128, count: int = 3, depth: int = 1):
        super().__init__()
        self.indices, channels = dense_layers(backbone, count)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        blocks = [layer for _ in range(depth) for layer in (
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))]
        self.fuse = nn.Sequential(*blocks, nn.Conv2d(width, out_channels, 1))

    def forward(self, backbone: nn.Module, x: torch.Tensor, out_size: int) -> torch.Tensor:
        maps = backbone.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        size = maps[0].shape[-2:]
        fused = sum(F.interpolate(lat(m), size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size
                    else lat(m) for lat, m in zip(self.lateral, maps))
        out = self.fuse(fused)
        if out.shape[-1] != out_size:
            out = F.interpolate(out, size=(out_size, out_size), mode="bilinear", align_corners=False)
        return out


def tile_grid(columns: list[torch.Tensor], min_tile: int = 96, gap: int = 2):
    """A PIL image with one row per image and one column per batch in `columns` (each (N, 3, S, S),
    RGB in [0, 1]); tiles upscaled by a whole factor to at least `min_tile` px, `gap` white px apart."""
    from PIL import Image

    n, _, side, _ = columns[0].shape
    scale = max(1, math.ceil(min_tile / side))
    tile = side * scale
    canvas = torch.ones(3, n * tile + (n - 1) * gap, len(columns) * tile + (len(columns) - 1) * gap)
    for j, col in enumerate(columns):
        big = F.interpolate(col.float().cpu(), scale_factor=scale, mode="nearest") if scale > 1 else col.float().cpu()
        for i in range(n):
            y, x = i * (tile + gap), j * (tile + gap)
            canvas[:, y:y + tile, x:x + tile] = big[i]
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(pixels)
