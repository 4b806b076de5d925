"""`synthetic:shapes`: labelled images of ten upright shapes, generated procedurally.

Classes differ only by outline. Colour, size, position, a small tilt, the background and the
textures of both vary at random, so neither colour nor position gives the class away, and every
shape has a clear "up" so that rotation and patch-position tasks are meaningful. Generation is
deterministic for a (seed, split) pair.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw

# Outlines in [-1, 1]^2, y pointing up. None is symmetric under a 90 degree rotation.
SHAPES: dict[str, list[tuple[float, float]]] = {
    "triangle": [(-1, -0.8), (1, -0.8), (0, 0.9)],
    "arrow": [(-0.3, -1), (0.3, -1), (0.3, 0.1), (0.85, 0.1), (0, 1), (-0.85, 0.1), (-0.3, 0.1)],
    "tee": [(-1, 1), (1, 1), (1, 0.5), (0.25, 0.5), (0.25, -1), (-0.25, -1), (-0.25, 0.5), (-1, 0.5)],
    "ell": [(-0.8, 1), (-0.3, 1), (-0.3, -0.5), (0.8, -0.5), (0.8, -1), (-0.8, -1)],
    "house": [(-0.8, -1), (0.8, -1), (0.8, 0.15), (0, 1), (-0.8, 0.15)],
    "trapezoid": [(-1, -0.6), (1, -0.6), (0.45, 0.6), (-0.45, 0.6)],
    "chevron": [(-1, -0.3), (0, 0.9), (1, -0.3), (1, -0.9), (0, 0.3), (-1, -0.9)],
    "arch": [(-1, -1), (-1, 0.4), (-0.5, 1), (0.5, 1), (1, 0.4), (1, -1), (0.45, -1), (0.45, 0.25),
             (-0.45, 0.25), (-0.45, -1)],
    "tree": [(-0.18, -1), (0.18, -1), (0.18, -0.45), (0.95, -0.45), (0, 1), (-0.95, -0.45), (-0.18, -0.45)],
    "dome": [(np.cos(a), -0.6 + 1.5 * np.sin(a)) for a in np.linspace(0, np.pi, 17)],
}
CLASSES = list(SHAPES)
NATIVE_SIZE = 64
_SPLIT_OFFSET = {"train": 0, "val": 1_000_003}


def _rasterise(poly: np.ndarray, size: int, supersample: int) -> np.ndarray:
    """A size x size float coverage mask of the polygon given in [-1, 1]^2 with y up."""
    n = size * supersample
    canvas = Image.new("L", (n, n), 0)
    pixels = [((x + 1) / 2 * n, (1 - y) / 2 * n) for x, y in poly]
    ImageDraw.Draw(canvas).polygon(pixels, fill=255)
    canvas = canvas.resize((size, size), Image.BOX)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _texture(rng: np.random.Generator, size: int, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A random multiplicative texture, at most about +-15%: flat, gradient, stripes or noise.
    Strong enough to vary, weak enough that the outline stays the most visible thing."""
    gx, gy = grid
    kind = rng.integers(4)
    angle = rng.uniform(0, np.pi)
    u = gx * np.cos(angle) + gy * np.sin(angle)
    if kind == 0:
        t = np.zeros_like(gx)
    elif kind == 1:
        t = 0.15 * u
    elif kind == 2:
        t = 0.12 * np.sin(u * rng.uniform(4, 12) + rng.uniform(0, 2 * np.pi))
    else:
        t = rng.standard_normal(gx.shape, dtype=np.float32) * 0.06
    return 1.0 + t


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.05, 0.95, 3)


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def render_shape(rng: np.random.Generator, label: int, size: int = NATIVE_SIZE) -> np.ndarray:
    """One HxWx3 uint8 image of class `label`."""
    ss = 4  # supersample the outline for smooth edges
    poly = np.asarray(SHAPES[CLASSES[label]], dtype=np.float32)
    scale = rng.uniform(0.45, 0.75)
    aspect = rng.uniform(0.85, 1.15)
    tilt = rng.uniform(-0.25, 0.25)  # radians; keeps the shape upright
    cx, cy = rng.uniform(-(0.95 - scale), 0.95 - scale, 2)
    cos, sin = np.cos(tilt), np.sin(tilt)
    px, py = poly[:, 0] * scale * aspect, poly[:, 1] * scale / aspect
    poly = np.stack([px * cos - py * sin + cx, px * sin + py * cos + cy], axis=1)
    mask = _rasterise(poly, size, ss)[..., None]

    bg = _random_colour(rng)
    fg = _random_colour(rng)
    while abs(_luma(fg) - _luma(bg)) < 0.25:
        fg = _random_colour(rng)
    grid = _grid(size)
    background = bg * _texture(rng, size, grid)[..., None]
    foreground = fg * _texture(rng, size, grid)[..., None]
    image = mask * foreground + (1 - mask) * background
    image += rng.standard_normal(image.shape, dtype=np.float32) * 0.02
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    coords = ((np.arange(n) + 0.5) / n * 2 - 1).astype(np.float32)
    gx, gy = np.meshgrid(coords, -coords)  # y up
    return gx, gy


def generate_shapes(n: int, seed: int, split: str, size: int = NATIVE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(images NxHxWx3 uint8, labels N int64), classes balanced, deterministic by (seed, split)."""
    rng = np.random.default_rng(seed + _SPLIT_OFFSET[split])
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images = np.stack([render_shape(rng, int(y), size) for y in labels])
    return images, labels.astype(np.int64)
