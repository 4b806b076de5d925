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

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.augment import normalize, random_resized_crop, to_float
from ..errors import UserError
from ..recipe import Recipe, option
from ..registry import register_method
from ._dense import DenseConfig, LightDecoder, tile_grid
from .base import Method, StepOutput, view_side

# ---------------------------------------------------------------- colour space

# linear sRGB -> CIE XYZ (D65); the white point is its row sums, so RGB white is exactly L=100, a=b=0
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_WHITE = tuple(sum(row) for row in _RGB_TO_XYZ)
_XYZ_TO_RGB = tuple(map(tuple, torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).tolist()))
_DELTA = 6 / 29


def _check_image(x: torch.Tensor, name: str, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects (N, 3, H, W) {what}, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name} expects a float tensor, got {x.dtype} (use to_float for uint8 images)")


@functools.lru_cache(maxsize=64)
def _const(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant tensor, made once per device and dtype (no host-to-device copy per call);
    never an inference tensor, so it may be used under autograd later."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


def _mix(matrix, x: torch.Tensor) -> torch.Tensor:
    """A 3x3 colour matrix applied over dim 1, as elementwise sums (kept out of autocast's reach,
    which would run a matmul in bf16/fp16)."""
    m = _const(matrix, x.device, x.dtype)
    return (m.view(1, 3, 3, *([1] * (x.ndim - 2))) * x.unsqueeze(1)).sum(2)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB (gamma encoded, values in [0, 1]) to CIE Lab under D65: (N, 3, H, W) float to
    (N, 3, H, W) with L in [0, 100] and a, b roughly in [-110, 110]."""
    _check_image(x, "rgb_to_lab", "RGB images in [0, 1]")
    x = x.clamp(0, 1)
    linear = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    xyz = _mix(_RGB_TO_XYZ, linear)
    xyz = xyz / _const(_WHITE, x.device, x.dtype).view(1, 3, 1, 1)
    f = torch.where(xyz > _DELTA**3, xyz.clamp(min=_DELTA**3) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) to sRGB in [0, 1], the inverse of `rgb_to_lab`; colours outside the sRGB
    gamut are clipped."""
    _check_image(lab, "lab_to_rgb", "Lab images")
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], 1)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29))
    xyz = xyz * _const(_WHITE, lab.device, lab.dtype).view(1, 3, 1, 1)
    linear = _mix(_XYZ_TO_RGB, xyz).clamp(0, 1)
    rgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)
    return rgb.clamp(0, 1)


# ---------------------------------------------------------------- ab bins

BIN_WIDTH = 10.0
AB_LOW, AB_HIGH = -110.0, 110.0
BINS_PER_SIDE = int((AB_HIGH - AB_LOW) / BIN_WIDTH)  # 22
NUM_BINS = BINS_PER_SIDE**2  # 484, index = a_bin * 22 + b_bin


@functools.lru_cache(maxsize=16)
def _centres(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):
        side = AB_LOW + BIN_WIDTH / 2 + BIN_WIDTH * torch.arange(BINS_PER_SIDE, device=device, dtype=dtype)
        a, b = torch.meshgrid(side, side, indexing="ij")
        return torch.stack([a.flatten(), b.flatten()], 1)


def bin_centres(device=None, dtype=torch.float32) -> torch.Tensor:
    """(484, 2) ab centres of the bins, in index order."""
    return _centres(torch.device(device or "cpu"), dtype).clone()


def encode_ab(ab: torch.Tensor) -> torch.Tensor:
    """(N, 2, ...) ab values to (N, ...) int64 indices of the nearest bin centre; values outside
    [-110, 110) go to the nearest edge bin."""
    if not isinstance(ab, torch.Tensor) or ab.ndim < 2 or ab.shape[1] != 2:
        shape = tuple(ab.shape) if isinstance(ab, torch.Tensor) else type(ab).__name__
        raise ValueError(f"encode_ab expects (N, 2, ...) ab values, got {shape}")
    if not ab.is_floating_point():
        raise ValueError(f"encode_ab expects a float tensor, got {ab.dtype}")
    cell = torch.floor((ab.float() - AB_LOW) / BIN_WIDTH).long().clamp(0, BINS_PER_SIDE - 1)
    return cell[:, 0] * BINS_PER_SIDE + cell[:, 1]


def soft_encode_ab(ab: torch.Tensor, neighbours: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """(N, 2, ...) ab values to (N, 484, ...) target distributions: each value's `neighbours`
    nearest bin centres weighted by a Gaussian of their distance (sigma in ab units), summing to 1.
    The paper's soft encoding (5 neighbours, sigma 5); 1 neighbour is the one-hot of `encode_ab`."""
    if not isinstance(ab, torch.Tensor) or ab.ndim < 2 or ab.shape[1] != 2 or not ab.is_floating_point():
        what = f"{ab.dtype} {tuple(ab.shape)}" if isinstance(ab, torch.Tensor) else type(ab).__name__
        raise ValueError(f"soft_encode_ab expects (N, 2, ...) float ab values, got {what}")
    if not 1 <= neighbours <= NUM_BINS:
        raise ValueError(f"soft_encode_ab neighbours must lie in [1, {NUM_BINS}], got {neighbours}")
    if not sigma > 0:
        raise ValueError(f"soft_encode_ab sigma must be positive, got {sigma}")
    if neighbours == 1:
        return F.one_hot(encode_ab(ab), NUM_BINS).movedim(-1, 1).float()
    values = ab.float().movedim(1, -1)  # (N, ..., 2)
    d2 = ((values.unsqueeze(-2) - _centres(ab.device, torch.float32)) ** 2).sum(-1)  # (N, ..., 484)
    near, index = d2.topk(neighbours, dim=-1, largest=False)
    w = torch.softmax(-near / (2 * sigma**2), dim=-1)
    return torch.zeros_like(d2).scatter_(-1, index, w).movedim(-1, 1)


def decode_bins(index: torch.Tensor) -> torch.Tensor:
    """(N, ...) bin indices to (N, 2, ...) ab bin centres."""
    if not isinstance(index, torch.Tensor) or index.ndim < 1 or index.is_floating_point() or index.is_complex():
        what = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, torch.Tensor) else type(index).__name__
        raise ValueError(f"decode_bins expects an integer (N, ...) tensor of bin indices, got {what}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= NUM_BINS):
        raise ValueError(f"decode_bins: bin indices must lie in [0, {NUM_BINS}), "
                         f"got {int(index.min())}..{int(index.max())}")
    return _centres(index.device, torch.float32)[index.long()].movedim(-1, 1)


def annealed_mean(logits: torch.Tensor, T: float = 0.38) -> torch.Tensor:
    """(N, 484, ...) bin logits to (N, 2, ...) ab: the mean of the bin centres under the
    distribution sharpened by temperature T (T=1 the mean, T->0 the mode; the paper uses 0.38)."""
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2 or logits.shape[1] != NUM_BINS:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"annealed_mean expects (N, {NUM_BINS}, ...) bin logits, got {shape}")
    if not T > 0:
        raise ValueError(f"annealed_mean temperature must be positive, got {T}")
    probs = torch.softmax(logits.float() / T, dim=1)
    centres = _centres(logits.device, torch.float32).view(NUM_BINS, 2, *([1] * (logits.ndim - 2)))
    return torch.stack([(probs * centres[:, 0]).sum(1), (probs * centres[:, 1]).sum(1)], 1)


# ---------------------------------------------------------------- prior and rebalancing

def smooth_prior(prior: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """A (484,) distribution over the bins smoothed by a Gaussian over the ab plane (sigma in ab
    units; the paper uses 5), renormalised to sum to 1."""
    if not isinstance(prior, torch.Tensor) or prior.shape != (NUM_BINS,):
        shape = tuple(prior.shape) if isinstance(prior, torch.Tensor) else type(prior).__name__
        raise ValueError(f"smooth_prior expects a ({NUM_BINS},) distribution, got {shape}")
    if not sigma >= 0:
        raise ValueError(f"smooth_prior sigma must be non-negative, got {sigma}")
    total = prior.sum()
    if not total > 0 or (prior < 0).any():
        raise ValueError("smooth_prior expects non-negative values with a positive sum")
    if sigma == 0:
        return prior / total
    radius = max(1, math.ceil(3 * sigma / BIN_WIDTH))
    offsets = BIN_WIDTH * torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(prior.device)
    grid = prior.double().view(1, 1, BINS_PER_SIDE, BINS_PER_SIDE)
    grid = F.conv2d(grid, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    grid = F.conv2d(grid, kernel.view(1, 1, 1, -1), padding=(0, radius))
    out = grid.flatten()
    return (out / out.sum()).to(prior.dtype)


def rebalance_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Per-bin loss weights w ∝ 1 / ((1 - lam) p + lam / Q) for a (484,) prior p, where Q counts
    the bins with p > 0, scaled so that sum_q p_q w_q = 1 (the paper's equation 4; lam = 1 gives
    all weights 1, smaller lam weighs rare colours up)."""
    if not isinstance(prior, torch.Tensor) or prior.shape != (NUM_BINS,):
        shape = tuple(prior.shape) if isinstance(prior, torch.Tensor) else type(prior).__name__
        raise ValueError(f"rebalance_weights expects a ({NUM_BINS},) prior, got {shape}")
    if not 0 < lam <= 1:
        raise ValueError(f"rebalance_weights lam must lie in (0, 1], got {lam} (lam = 0 weighs unseen bins infinitely)")
    if (prior < 0).any() or not prior.sum() > 0:
        raise ValueError("rebalance_weights expects a prior of non-negative values with a positive sum")
    p = prior.double() / prior.double().sum()
    q = int((p > 0).sum())
    w = 1.0 / ((1 - lam) * p + lam / q)
    return (w / (p * w).sum()).to(prior.dtype)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy of (N, Q, ...) logits against (N, ...) bin indices or (N, Q, ...)
    target distributions (soft encoding), each pixel's loss multiplied by the weight of its target
    bin (the most probable one for a distribution, as in the paper), averaged over pixels."""
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2:
        raise ValueError(f"weighted_cross_entropy expects (N, Q, ...) logits, got {getattr(logits, 'shape', logits)}")
    soft = target.is_floating_point()
    expected = logits.shape if soft else logits.shape[:1] + logits.shape[2:]
    if target.shape != expected:
        raise ValueError(f"weighted_cross_entropy: target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)} (expected {tuple(expected)})")
    if weights.shape != (logits.shape[1],):
        raise ValueError(f"weighted_cross_entropy expects ({logits.shape[1]},) weights, got {tuple(weights.shape)}")
    if soft:
        ce = -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(1)
        target = target.argmax(1)
    else:
        ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (ce * weights.float()[target]).mean()


# ---------------------------------------------------------------- the method

def _grey(L: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) lightness to the (N, 3, H, W) grey sRGB image of that lightness."""
    return lab_to_rgb(torch.cat([L, torch.zeros_like(L).expand(-1, 2, -1, -1)], 1))


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

    def __init__(self, cfg: ColorizationConfig, recipe, backbone, feature_dim, image_size, num_classes=None):
        super().__init__(cfg, recipe, backbone, feature_dim, image_size, num_classes)
        self.decoder = LightDecoder(backbone, NUM_BINS, width=cfg.decoder_width, count=cfg.decoder_stages,
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
        inputs = normalize(_grey(lab[:, :1]))
        ab = F.adaptive_avg_pool2d(lab[:, 1:], out_size)
        return inputs, encode_ab(ab), ab

    def make_views(self, images: torch.Tensor, gen: torch.Generator, labels=None):
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
        grey = _grey(L)
        logits = self.decoder(self.backbone, normalize(grey), max(1, side // 4)).float()
        ab = annealed_mean(logits, self.cfg.annealed_t)
        ab = F.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)
        colour = lab_to_rgb(torch.cat([L, ab], 1))
        return tile_grid([grey, colour, x], min_tile)
