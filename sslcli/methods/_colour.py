"""Colour for the colourisation pretext task (Zhang, Isola, Efros, "Colorful Image Colorization",
ECCV 2016): sRGB <-> CIE Lab in torch, the 22x22 grid of quantised ab bins (hard and soft
encoding, annealed-mean decoding), and the colour prior with its class-rebalancing weights."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

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


def grey_rgb(L: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) lightness to the (N, 3, H, W) grey sRGB image of that lightness."""
    return lab_to_rgb(torch.cat([L, torch.zeros_like(L).expand(-1, 2, -1, -1)], 1))
