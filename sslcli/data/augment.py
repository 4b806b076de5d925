"""Batched augmentations on image tensors, on whatever device the batch lives on.

Each sample draws its own parameters from a `torch.Generator`, so a whole batch is augmented
with a handful of tensor operations (one `grid_sample` does crop, resize and flip) and the
result is reproducible from the generator state, which the engine checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] to float [0, 1]; float input passes through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: float = 0.0,
) -> torch.Tensor:
    """Per-sample random crop of area fraction in `scale` and aspect in `ratio`, resized to `size`,
    mirrored with probability `flip`. Crops that would leave the image are shrunk to fit."""
    n, device = x.shape[0], x.device
    area = _uniform(n, scale[0], scale[1], gen, device)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen, device)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen, device=device) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen, device=device) * 2 - 1) * (1 - h)
    sign = torch.where(_bernoulli(n, flip, gen, device), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each sample's hue by `shift` (fractions of a turn), keeping saturation and value:
    RGB -> HSV -> RGB with the hue moved, without forming S and V (V = max, V * S = max - min)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    h = ((h + shift.view(-1, 1, 1)) % 1.0).unsqueeze(1) * 6
    k = (h + torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)) % 6
    return maxc.unsqueeze(1) - delta.unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter(x: torch.Tensor, gen: torch.Generator, strength: float, p: float) -> torch.Tensor:
    """SimCLR colour distortion: brightness, contrast, saturation (0.8 s) and hue (0.2 s), applied
    to each sample with probability `p`, each sample with its own factors."""
    n, device = x.shape[0], x.device
    if strength <= 0 or p <= 0:
        return x
    apply = _bernoulli(n, p, gen, device).view(n, 1, 1, 1)
    s = 0.8 * strength
    b = _uniform(n, max(0.0, 1 - s), 1 + s, gen, device).view(n, 1, 1, 1)
    c = _uniform(n, max(0.0, 1 - s), 1 + s, gen, device).view(n, 1, 1, 1)
    sat = _uniform(n, max(0.0, 1 - s), 1 + s, gen, device).view(n, 1, 1, 1)
    hue = _uniform(n, -min(0.5, 0.2 * strength), min(0.5, 0.2 * strength), gen, device)
    chosen = torch.nonzero(apply.flatten()).flatten()  # the work is done for these samples only
    if len(chosen) == 0:
        return x
    y = (x[chosen] * b[chosen]).clamp(0, 1)
    mean = grayscale(y).mean((2, 3), keepdim=True)
    y = ((y - mean) * c[chosen] + mean).clamp(0, 1)
    gray = grayscale(y)
    y = ((y - gray) * sat[chosen] + gray).clamp(0, 1)
    return x.index_copy(0, chosen, _shift_hue(y, hue[chosen]))


def random_grayscale(x: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    if p <= 0:
        return x
    apply = _bernoulli(x.shape[0], p, gen, x.device).view(-1, 1, 1, 1)
    return torch.where(apply, grayscale(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, gen: torch.Generator, p: float, sigma: tuple[float, float]) -> torch.Tensor:
    """Blur each sample with probability `p`, sigma drawn from `sigma` (pixels at 224 px, scaled
    to this image size); kernel side about a tenth of the image, as in SimCLR."""
    if p <= 0:
        return x
    n, ch, hgt, wid = x.shape
    device = x.device
    scale = hgt / 224
    sig = _uniform(n, sigma[0] * scale, sigma[1] * scale, gen, device).clamp(min=1e-3)
    apply = _bernoulli(n, p, gen, device)
    radius = max(1, int(hgt * 0.05))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=x.dtype)
    chosen = torch.nonzero(apply).flatten()  # the work is done for these samples only
    if len(chosen) == 0:
        return x
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sig[chosen].view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = kernel.repeat_interleave(ch, 0)  # one kernel per (sample, channel)
    m = len(chosen) * ch
    flat = x[chosen].reshape(1, m, hgt, wid)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel.view(m, 1, 1, -1), groups=m)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(m, 1, -1, 1), groups=m)
    return x.index_copy(0, chosen, flat.view(-1, ch, hgt, wid))


def solarize(x: torch.Tensor, gen: torch.Generator, p: float, threshold: float = 0.5) -> torch.Tensor:
    """Invert every value at or above `threshold` (images in [0, 1]) in each sample with
    probability `p` (the BYOL augmentation)."""
    if p <= 0:
        return x
    apply = _bernoulli(x.shape[0], p, gen, x.device).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= threshold), 1 - x, x)


def per_view(value, view: int) -> float:
    """A probability that may be given per view: a number serves every view, a pair
    [first, second] gives view 0 its first entry and every later view its second."""
    if isinstance(value, (list, tuple)):
        return float(value[min(view, len(value) - 1)])
    return float(value)


class ViewAugment:
    """The SimCLR family's view: crop, flip, colour jitter, grayscale, blur, solarisation,
    normalisation, configured by a recipe's `augment` section; `view` picks the entry of keys given
    per view (0: the first view, 1: the second)."""

    def __init__(self, cfg, out_size: int, view: int = 0):
        self.cfg = cfg
        self.out_size = out_size
        self.blur = per_view(cfg.blur, view)
        self.solarize = per_view(cfg.solarize, view)

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return normalize(self.unnormalised(images, gen))

    def unnormalised(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The augmented view in [0, 1], before the ImageNet normalisation (for methods that cut
        it up first)."""
        cfg = self.cfg
        x = to_float(images)
        x = random_resized_crop(x, self.out_size, gen, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), cfg.flip)
        x = color_jitter(x, gen, cfg.color_jitter, cfg.color_jitter_prob)
        x = random_grayscale(x, gen, cfg.grayscale)
        x = gaussian_blur(x, gen, self.blur, tuple(cfg.blur_sigma))
        return solarize(x, gen, self.solarize)


def eval_view(images: torch.Tensor) -> torch.Tensor:
    """The evaluation view: the whole image, normalised."""
    return normalize(to_float(images))
