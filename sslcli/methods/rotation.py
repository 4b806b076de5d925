"""Rotation prediction: each image is shown at 0, 90, 180 and 270 degrees and a 4-way head
says which. Gidaris et al., "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import ViewAugment
from ..data.images import Batch
from ..recipe import MethodConfig, option
from ..registry import register_method
from .base import Method, MethodContext, StepOutput, projection_mlp


def rotate_all(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image at the four rotations: (4N images, labels 0..3), label k meaning k * 90 degrees
    counter-clockwise; the first N are unrotated, the next N turned by 90 degrees, and so on."""
    if x.ndim != 4:
        raise ValueError(f"rotate_all expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate_all needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


@dataclass
class RotationConfig(MethodConfig):
    head_hidden_dim: int = option(0, "hidden width of the rotation head (0: a linear head)", min=0)


@register_method("rotation")
class Rotation(Method):
    Config = RotationConfig
    description = "pretext: predict which of 0/90/180/270 degrees an image was rotated by"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: RotationConfig = self.cfg
        if cfg.head_hidden_dim:
            self.head = projection_mlp(ctx.feature_dim, cfg.head_hidden_dim, 4)
        else:
            self.head = nn.Linear(ctx.feature_dim, 4)
        self.augment = ViewAugment(ctx.recipe.augment, self.crop_size)

    def make_views(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch.images
        return rotate_all(self.augment(images, gen))

    def training_step(self, views) -> StepOutput:
        images, labels = views
        logits = self.head(self.backbone(images))
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return loss, {"rotation_acc": acc}
