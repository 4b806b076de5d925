"""Inpainting ("fill in the blanks"): part of each image is hidden and the network paints it back
from the context around it. The backbone encodes the masked image and a light decoder predicts
every pixel; the loss is the squared error over the hidden pixels. Pathak et al., "Context
Encoders: Feature Learning by Inpainting", CVPR 2016 (a centred square of a quarter of the area,
or several random blocks; an L2 reconstruction loss, with a small weight on the visible pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..data.augment import IMAGENET_MEAN, IMAGENET_STD, normalize, random_resized_crop, to_float
from ..data.images import Batch
from ..errors import UserError
from ..recipe import option
from ..registry import register_method
from ._dense import DenseConfig, LightDecoder, tile_grid
from .base import Method, MethodContext, StepOutput, view_side

MIN_SIDE = 16  # training views smaller than this leave too little context around the hole
GREY = 0.5  # how hidden pixels are shown in visual.png


def block_side(size: int, fraction: float, blocks: int = 1) -> int:
    """Side of each of `blocks` squares that together hide about `fraction` of a size x size image:
    round(size * sqrt(fraction / blocks)), at least 1 and at most `size`."""
    return min(size, max(1, round(size * math.sqrt(fraction / blocks))))


def make_mask(n: int, size: int, mode: str, gen: torch.Generator | None, *, fraction: float = 0.25,
              blocks: int = 4, device=None) -> torch.Tensor:
    """Bool masks of shape (n, 1, size, size), True where pixels are hidden.

    "center": one square of side round(size * sqrt(fraction)) at rows and columns
    [(size - side) // 2, (size - side) // 2 + side), the same for every image (`gen` unused).
    "random": `blocks` squares of side round(size * sqrt(fraction / blocks)) per image, each wholly
    inside the image at a position drawn from `gen` (squares may overlap, so they hide at most
    blocks * side**2 pixels)."""
    if n < 0 or size < 1:
        raise ValueError(f"make_mask needs n >= 0 and size >= 1, got n={n}, size={size}")
    if not 0 < fraction <= 1:
        raise ValueError(f"make_mask fraction must lie in (0, 1], got {fraction}")
    if mode == "center":
        side = block_side(size, fraction)
        start = (size - side) // 2
        mask = torch.zeros(n, 1, size, size, dtype=torch.bool, device=device)
        mask[:, :, start:start + side, start:start + side] = True
        return mask
    if mode == "random":
        if blocks < 1:
            raise ValueError(f"make_mask needs at least one block, got {blocks}")
        side = block_side(size, fraction, blocks)
        corner = torch.randint(0, size - side + 1, (n, blocks, 2), generator=gen, device=device)
        pos = torch.arange(size, device=device)
        top, left = corner[..., 0:1], corner[..., 1:2]  # (n, blocks, 1)
        rows = (pos >= top) & (pos < top + side)  # (n, blocks, size)
        cols = (pos >= left) & (pos < left + side)
        return (rows.unsqueeze(-1) & cols.unsqueeze(-2)).any(1).unsqueeze(1)
    raise ValueError(f"make_mask mode must be 'center' or 'random', got {mode!r}")


def _check_pair(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask as float, broadcast to pred's shape, after checking the three agree."""
    if pred.shape != target.shape:
        raise ValueError(f"masked_l2: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim != 4:
        raise ValueError(f"masked_l2 expects (N, C, H, W) images, got shape {tuple(pred.shape)}")
    if mask.ndim != 4 or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:] \
            or mask.shape[1] not in (1, pred.shape[1]):
        raise ValueError(f"masked_l2: mask {tuple(mask.shape)} does not fit images {tuple(pred.shape)}; "
                         f"it must be (N, 1, H, W) or (N, C, H, W)")
    if mask.dtype != torch.bool:
        raise ValueError(f"masked_l2: mask must be a bool tensor (True where hidden), got {mask.dtype}")
    if not bool(mask.any()):
        raise ValueError("masked_l2: the mask hides no pixel, so there is nothing to inpaint")
    return mask.expand_as(pred).to(pred.dtype)


def masked_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
              context_weight: float = 0.0) -> torch.Tensor:
    """Mean squared error over the hidden pixels (the mean over hidden pixel-channels), plus
    `context_weight` times the mean squared error over the visible ones (0 if none is visible).
    `mask` is bool, (N, 1, H, W) or (N, C, H, W), True where hidden."""
    hidden = _check_pair(pred, target, mask)
    sq = (pred - target).square()
    loss = (sq * hidden).sum() / hidden.sum()
    if context_weight:
        visible = 1 - hidden
        loss = loss + context_weight * (sq * visible).sum() / visible.sum().clamp(min=1)
    return loss


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images back to RGB in [0, 1] (clamped)."""
    m = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * s + m).clamp(0, 1)


def hidden_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of the hidden region, both images in [0, 1] RGB (de-normalised and clamped)."""
    mse = masked_l2(denormalize(pred.float()), denormalize(target.float()), mask)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


@dataclass
class InpaintingConfig(DenseConfig):
    mask: Literal["center", "random"] = option(
        "center", "center: one centred square; random: `blocks` squares at random places in each view")
    fraction: float = option(0.25, "share of the view's area hidden (0.25: Pathak's quarter)", min=0.01, max=0.75)
    blocks: int = option(4, "random mask: squares per view (they may overlap)", min=1)
    context_weight: float = option(0.0, "loss weight of the visible pixels' reconstruction (Pathak: small)", min=0)


@register_method("inpainting")
class Inpainting(Method):
    Config = InpaintingConfig
    description = "pretext: paint back a hidden region of each image from its context (context encoder)"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: InpaintingConfig = self.cfg
        self.decoder = LightDecoder(ctx.backbone, 3, width=cfg.decoder_width, count=cfg.decoder_stages,
                                    depth=cfg.decoder_depth)

    @classmethod
    def check_data(cls, data, recipe) -> None:
        super().check_data(data, recipe)
        crop = recipe.augment.crop_size
        side = view_side(recipe, data.image_size)
        if side < MIN_SIDE:
            key = "augment.crop_size" if crop != "auto" else "data.image_size"
            raise UserError(
                f"method '{cls.name}' needs training views of at least {MIN_SIDE} px to hide a region and paint it "
                f"back, but {key} gives {side} px; pass --set {key}=32 or more"
            )

    def _mask(self, n: int, size: int, gen: torch.Generator, device) -> torch.Tensor:
        c = self.cfg
        return make_mask(n, size, c.mask, gen, fraction=c.fraction, blocks=c.blocks, device=device)

    def make_views(self, batch: Batch, gen: torch.Generator):
        images = batch.images
        """(masked input, mask, target): the normalised crop with hidden pixels set to 0 (the
        dataset mean), the bool (N, 1, S, S) mask, and the normalised crop itself."""
        a = self.recipe.augment
        x = random_resized_crop(to_float(images), self.crop_size, gen, tuple(a.crop_scale), tuple(a.crop_ratio), a.flip)
        target = normalize(x)
        mask = self._mask(target.shape[0], self.crop_size, gen, target.device)
        return target.masked_fill(mask, 0.0), mask, target

    def predict(self, masked: torch.Tensor) -> torch.Tensor:
        """The decoder's full-resolution image (normalised units) for masked inputs."""
        return self.decoder(self.backbone, masked, masked.shape[-1])

    def training_step(self, views) -> StepOutput:
        masked, mask, target = views
        pred = self.predict(masked).float()
        target = target.float()
        loss = masked_l2(pred, target, mask, self.cfg.context_weight)
        with torch.no_grad():
            mse = masked_l2(pred, target, mask) if self.cfg.context_weight else loss.detach()
            psnr = hidden_psnr(pred, target, mask)
        return loss, {"masked_mse": mse, "psnr": psnr}

    @torch.no_grad()
    def visualize(self, images: torch.Tensor):
        """One row per image (up to 8): the masked input (hidden region grey), the reconstruction
        (visible pixels from the input, hidden ones predicted) and the truth."""
        images = images[:8]
        x = to_float(images)
        if x.shape[-1] != self.crop_size or x.shape[-2] != self.crop_size:
            x = F.interpolate(x, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 1)
        target = normalize(x)
        gen = torch.Generator(device=x.device).manual_seed(0)
        mask = self._mask(x.shape[0], self.crop_size, gen, x.device)
        pred = self.predict(target.masked_fill(mask, 0.0)).float()
        shown = x.masked_fill(mask, GREY)
        filled = torch.where(mask, denormalize(pred), x)
        return tile_grid([shown, filled, x])
