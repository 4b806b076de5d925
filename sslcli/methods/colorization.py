"""Colourisation: the network sees only the lightness (L) of an image and predicts, for every
pixel, a distribution over quantised ab colour bins, trained with a class-rebalanced
cross-entropy so that rare, saturated colours are not drowned out by greys and browns; a colour
is read back as the annealed mean of that distribution.

Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016.

Differences from the paper, for a pretext task on small images: the ab grid is a fixed 22x22
grid of 10-unit bins over [-110, 110)^2 (484 bins, the paper keeps the 313 in gamut), so
checkpoint shapes never depend on the data; the prior comes from a seeded sample of the
training images at the training resolution; the dense head is the shared `LightDecoder`; and
the target is the nearest bin, one-hot, by default: the paper's soft encoding over 5 bins
(`soft_neighbours=5`) colours better but gave features that probe lower on tiny-imagenet-10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.augment import normalize, random_resized_crop, to_float
from ..data.images import Batch
from ..errors import UserError
from ..losses import weighted_cross_entropy
from ..recipe import Recipe, option
from ..registry import register_method
from ._colour import NUM_BINS, annealed_mean, encode_ab, grey_rgb, lab_to_rgb, rebalance_weights, rgb_to_lab, smooth_prior, soft_encode_ab
from ._dense import DenseConfig, LightDecoder, tile_grid
from .base import Method, MethodContext, StepOutput, view_side


@dataclass
class ColorizationConfig(DenseConfig):
    rebalance: float = option(
        0.5, "class rebalancing strength, 1 - lambda of the paper (0.5 there): 0 off (all weights 1), "
             "higher weighs rare colours up", min=0, max=0.99,
    )
    annealed_t: float = option(0.38, "temperature of the annealed mean that turns bin scores into a colour", min=0.01)
    prior_samples: int = option(2000, "training images sampled to estimate the colour prior", min=1)
    soft_neighbours: int = option(
        1, "nearest bins each pixel's true colour is spread over, Gaussian-weighted (sigma 5): the paper's "
           "soft encoding uses 5; 1 is a one-hot target", min=1, max=NUM_BINS,
    )


@register_method("colorization")
class Colorization(Method):
    Config = ColorizationConfig
    description = "pretext: predict each pixel's colour (ab bins) from its lightness (L)"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: ColorizationConfig = self.cfg
        self.decoder = LightDecoder(ctx.backbone, NUM_BINS, width=cfg.decoder_width, count=cfg.decoder_stages,
                                    depth=cfg.decoder_depth)
        self.out_size = max(1, self.crop_size // 4)
        self.register_buffer("prior", torch.full((NUM_BINS,), 1.0 / NUM_BINS))
        self.register_buffer("weights", torch.ones(NUM_BINS))

    @classmethod
    def check_data(cls, data: Any, recipe: Recipe) -> None:
        super().check_data(data, recipe)
        crop = view_side(recipe, data.image_size)
        if crop < 16:
            raise UserError(
                f"method '{cls.name}' predicts colours on a grid a quarter of the view side and needs views "
                f"of at least 16 px, but they are {crop} px; pass --set augment.crop_size=16 (or larger) "
                f"and --set data.image_size=16 or more"
            )

    # -- views
    def _lab_views(self, rgb: torch.Tensor, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(network input, target bins, target ab) from float RGB images."""
        lab = rgb_to_lab(rgb.float().clamp(0, 1))
        inputs = normalize(grey_rgb(lab[:, :1]))
        ab = F.adaptive_avg_pool2d(lab[:, 1:], out_size)
        return inputs, encode_ab(ab), ab

    def make_views(self, batch: Batch, gen: torch.Generator):
        images = batch.images
        aug = self.recipe.augment
        x = random_resized_crop(to_float(images), self.crop_size, gen, tuple(aug.crop_scale), tuple(aug.crop_ratio),
                                aug.flip)
        return self._lab_views(x, self.out_size)

    def training_step(self, views) -> StepOutput:
        inputs, target, ab = views
        logits = self.decoder(self.backbone, inputs, self.out_size).float()
        soft = soft_encode_ab(ab, self.cfg.soft_neighbours) if self.cfg.soft_neighbours > 1 else target
        loss = weighted_cross_entropy(logits, soft, self.weights)
        with torch.no_grad():
            acc = (logits.argmax(1) == target).float().mean()
            err = (annealed_mean(logits, self.cfg.annealed_t) - ab.float()).abs().mean()
        return loss, {"color_acc": acc, "ab_error": err}

    # -- colour prior
    @torch.no_grad()
    def setup(self, train: Any) -> None:
        """Estimate the colour prior from up to `prior_samples` training images (a seeded sample),
        each resized to the view side and pooled to the target grid as in training, and derive
        the rebalancing weights from it. Both are buffers, so a resumed run reloads them."""
        n = len(train)
        if n == 0:
            return
        gen = torch.Generator().manual_seed(int(self.recipe.train.seed))
        pick = torch.sort(torch.randperm(n, generator=gen)[: self.cfg.prior_samples]).values
        counts = torch.zeros(NUM_BINS, dtype=torch.float64)
        for start in range(0, len(pick), 256):
            chunk = pick[start:start + 256]
            decoded = [image for image in train.stills(chunk.tolist()) if image is not None]
            if not decoded:
                continue
            images = torch.stack(decoded)
            x = to_float(images)
            if x.shape[-1] != self.crop_size or x.shape[-2] != self.crop_size:
                x = F.interpolate(x, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False,
                                  antialias=True)
            _, bins, _ = self._lab_views(x, self.out_size)
            counts += torch.bincount(bins.flatten(), minlength=NUM_BINS).double()
        if counts.sum() == 0:  # training on a uniform prior would silently switch rebalancing off
            raise UserError(f"colorization: none of the {len(pick)} training images sampled for the colour prior "
                            f"could be decoded, so class rebalancing has no prior; repair or replace the images of "
                            f"'{self.recipe.data.source}'")
        prior = smooth_prior(counts / counts.sum(), sigma=5.0)
        if self.cfg.rebalance > 0:
            weights = rebalance_weights(prior, 1.0 - self.cfg.rebalance)
        else:
            weights = torch.ones_like(prior)
        self.prior.copy_(prior.float())
        self.weights.copy_(weights.float())

    # -- picture
    @torch.no_grad()
    def visualize(self, images: torch.Tensor, min_tile: int = 96) -> Any | None:
        """One row per image (up to 8): the grey input, the colourised prediction and the truth."""
        images = images[:8]
        if images.ndim != 4 or images.shape[0] == 0:
            return None
        x = to_float(images).clamp(0, 1)
        side = x.shape[-1]
        lab = rgb_to_lab(x)
        L = lab[:, :1]
        grey = grey_rgb(L)
        logits = self.decoder(self.backbone, normalize(grey), max(1, side // 4)).float()
        ab = annealed_mean(logits, self.cfg.annealed_t)
        ab = F.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)
        colour = lab_to_rgb(torch.cat([L, ab], 1))
        return tile_grid([grey, colour, x], min_tile)
