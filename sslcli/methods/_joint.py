"""Shared pieces of the joint-embedding methods: two augmented views, optional small crops
(multi-crop), a momentum (EMA) copy of a network, and the collapse watch (the std of the
normalised embeddings)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn as nn

from ..data.augment import ViewAugment
from ..data.images import Batch
from ..errors import UserError
from ..losses import collapse_floor, embedding_std
from ..recipe import MethodConfig, option
from .base import Method, MethodContext

COLLAPSE_FRACTION = 0.25  # warn when the embedding std falls below this share of a healthy spread


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` for a momentum (EMA) target: same weights, no gradients."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter (buffers such
    as BatchNorm statistics follow the target's own forward passes, as in MoCo and BYOL)."""
    targets, onlines = list(target.parameters()), [o.detach() for o in online.parameters()]
    # one kernel per operation over all parameters, not two per parameter
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, onlines, alpha=1 - momentum)


def cosine_momentum(base: float, progress: float, ramp: bool = True) -> float:
    """The EMA momentum after `progress` (0..1) of training: `base`, raised to 1 along a cosine
    when `ramp` (BYOL's schedule, also used for MoCo here)."""
    if not ramp:
        return base
    return 1 - (1 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


@dataclass
class MultiCropConfig(MethodConfig):
    """Keys of multi-crop (Caron et al., NeurIPS 2020): besides the two large views, `small_crops`
    low-resolution crops of each image, which only predict and never serve as targets."""

    small_crops: int = option(0, "low-resolution crops per image besides the 2 large ones", min=0)
    small_crop_size: int = option(32, "side of the small crops in px (large crops: augment.crop_size)", min=8)
    small_crop_scale: list[float] = option([0.05, 0.3], "area range of the small crops, fractions of the image")

    def validate(self) -> None:
        check_scale("small_crop_scale", self.small_crop_scale)


def check_scale(name: str, scale: list[float]) -> None:
    """Refuse a crop area range that is not [low, high] with 0 < low <= high <= 1."""
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise UserError(f"method.{name} must be [low, high] with 0 < low <= high <= 1, got {list(scale)}")


class JointEmbedding(Method):
    """A method that learns by making embeddings of views of one image agree: two views of the
    recipe's augmentation, and a warning when the embeddings collapse to a point. On clips with
    `augment.time_window` > 0 the two views come from two frames of a clip at most that many
    seconds apart (time-contrastive: frames close in time show the same thing)."""

    two_views = True

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.augments = (ViewAugment(ctx.recipe.augment, self.crop_size, view=0),
                         ViewAugment(ctx.recipe.augment, self.crop_size, view=1))
        self.embedding_dim: Optional[int] = None  # set by the plugin: the width the std is measured at

    def take_frames(self, clips: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One frame of each clip, or with a time window a pair of frames: (B, 2, 3, S, S)."""
        reach = int(round(self.recipe.augment.time_window * self.recipe.data.fps))
        if reach < 1:
            return super().take_frames(clips, gen)
        b, t = clips.shape[:2]
        first = torch.randint(t, (b,), generator=gen, device=clips.device)
        shift = torch.randint(-reach, reach + 1, (b,), generator=gen, device=clips.device)
        second = (first + shift).clamp(0, t - 1)
        rows = torch.arange(b, device=clips.device)
        return torch.stack([clips[rows, first], clips[rows, second]], 1)

    @staticmethod
    def pair(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images each of the two views is made from: the same images, or a pair's frames."""
        return (images[:, 0], images[:, 1]) if images.ndim == 5 else (images, images)

    def make_views(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        images = batch.images
        return torch.cat([augment(frames, gen) for augment, frames in zip(self.augments, self.pair(images))])

    def small_crop_augment(self) -> Optional[ViewAugment]:
        """The augmentation of the small crops of a `MultiCropConfig` method: the recipe's, at the
        small crops' side and area range; None when the recipe asks for none."""
        cfg = self.cfg
        if not getattr(cfg, "small_crops", 0):
            return None
        return ViewAugment(replace(self.recipe.augment, crop_scale=list(cfg.small_crop_scale)), cfg.small_crop_size)

    def small_views(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The `small_crops` small crops of every image, crop by crop: (small_crops * N, C, s, s)."""
        return torch.cat([self.small(images, gen) for _ in range(self.cfg.small_crops)])

    def spread(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The collapse watch metric of embeddings `z` (N, D)."""
        self.embedding_dim = z.shape[1]
        return {"embedding_std": embedding_std(z.detach())}

    def epoch_warning(self, record: dict[str, float]) -> Optional[str]:
        std, dim = record.get("embedding_std"), self.embedding_dim
        if std is None or dim is None:
            return None
        healthy = collapse_floor(dim)
        if std < COLLAPSE_FRACTION * healthy:
            return (f"the embeddings are collapsing: their std is {std:.4f}, against about {healthy:.4f} when spread "
                    f"over {dim} dimensions; a trivial solution makes features useless: lower optim.lr, raise "
                    f"the augmentation strength, or check the method's settings")
        return None
