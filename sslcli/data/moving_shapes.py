"""`synthetic:moving-shapes`: clips of the ten shapes of `synthetic:shapes` moving on smooth
random paths, generated procedurally, with a soundtrack.

Each clip shows one shape (its class) over a textured background. The shape moves on a path
that turns smoothly, turns and grows or shrinks a little as it goes, and holds still for
stretches between moves, so frame order can be read from motion only part of the time. The
sound depends partly on what is seen: each class sounds at its own pitch and timbre, louder the
faster the shape moves, over ambient hums that come and go, unrelated to anything seen. Deterministic for a (seed, split) pair.
"""

from __future__ import annotations

import numpy as np

from .synthetic import CLASSES, SHAPES, _grid, _luma, _random_colour, _rasterise, _texture

NATIVE_SIZE = 64
FPS = 8
SECONDS = 4
SAMPLE_RATE = 16000
_SPLIT_OFFSET = {"train": 7_000_001, "val": 9_000_011}
PITCHES = [220.0 * 2 ** (2 * k / len(CLASSES)) for k in range(len(CLASSES))]  # two octaves, one pitch a class


def _segments(rng: np.random.Generator, frames: int) -> np.ndarray:
    """1 where the shape moves and 0 where it holds still, frame by frame: stretches of 6-16
    moving frames and 3-8 still ones, alternating."""
    moving = np.zeros(frames, dtype=np.float32)
    t, on = 0, rng.random() < 0.7
    while t < frames:
        length = int(rng.integers(6, 17) if on else rng.integers(3, 9))
        moving[t:t + length] = float(on)
        t, on = t + length, not on
    return moving


def _path(rng: np.random.Generator, frames: int, extent: float) -> dict[str, np.ndarray]:
    """Per-frame centre (x, y), tilt, scale factor and speed of one shape."""
    moving = _segments(rng, frames)
    speed = rng.uniform(0.1, 0.18)
    heading = rng.uniform(0, 2 * np.pi)
    turn = rng.uniform(-0.25, 0.25)
    spin = rng.choice([-1, 1]) * rng.uniform(0.06, 0.15)  # radians a frame: the pose changes while it moves
    grow = rng.choice([-1, 1]) * rng.uniform(0.01, 0.03)
    limit = 0.95 - extent
    x, y = rng.uniform(-limit, limit, 2)
    tilt, scale = rng.uniform(-0.2, 0.2), 1.0
    out = {k: np.zeros(frames, dtype=np.float32) for k in ("x", "y", "tilt", "scale", "speed")}
    for t in range(frames):
        if moving[t]:
            heading += turn + rng.normal(0, 0.15)
            x, y = x + speed * np.cos(heading), y + speed * np.sin(heading)
            if abs(x) > limit:  # bounce off the frame's edge
                x, heading = np.sign(x) * (2 * limit - abs(x)), np.pi - heading
            if abs(y) > limit:
                y, heading = np.sign(y) * (2 * limit - abs(y)), -heading
            tilt += spin
            if abs(tilt) > 1.2:  # turn back before the shape is upside down
                tilt, spin = float(np.sign(tilt) * (2.4 - abs(tilt))), -spin
            scale += grow
            if not 0.55 <= scale <= 1.5:
                scale, grow = float(np.clip(scale, 0.55, 1.5)), -grow
        out["x"][t], out["y"][t], out["tilt"][t], out["scale"][t] = x, y, tilt, scale
        out["speed"][t] = speed * moving[t]
    return out


def _soundtrack(rng: np.random.Generator, label: int, speed: np.ndarray, fps: float, rate: int) -> np.ndarray:
    """The class's tone (its pitch; odd classes with odd harmonics only, a hollower timbre),
    loudness following the shape's speed frame by frame, over ambient hums that change every
    0.5-1 s (pitch and timbre drawn anywhere in the classes' range, unrelated to what is seen:
    no frame can predict them, so they teach nothing but hide the class from a random ear)."""
    n = int(round(len(speed) / fps * rate))
    t = np.arange(n, dtype=np.float64) / rate

    def tone(pitch: float, odd: bool) -> np.ndarray:
        harmonics = [1, 3, 5] if odd else [1, 2, 3]
        phase = rng.uniform(0, 2 * np.pi)
        return sum(np.sin(2 * np.pi * pitch * h * t + phase) / h for h in harmonics) / 1.8

    shape_tone = tone(PITCHES[label] * rng.uniform(0.99, 1.01), bool(label % 2))
    hum = np.zeros(n)
    start = 0
    while start < n:  # ambient sounds come and go, every 0.5-1 s a new one, faded in and out over 20 ms
        stop = min(n, start + int(rng.uniform(0.5, 1.0) * rate))
        fade = np.minimum(1.0, np.minimum(t[start:stop] - t[start], t[stop - 1] - t[start:stop]) / 0.02)
        pitch = PITCHES[0] * 2 ** rng.uniform(-0.25, 2.25)  # anywhere in the classes' two octaves and beyond
        hum[start:stop] = tone(pitch, bool(rng.random() < 0.5))[start:stop] * fade * rng.uniform(0.6, 1.2)
        start = stop
    frame_times = (np.arange(len(speed)) + 0.5) / fps
    loudness = 0.3 + 0.5 * np.interp(t, frame_times, speed / max(float(speed.max()), 1e-6))
    noise = rng.normal(0, rng.uniform(0.005, 0.03), n)
    return (0.4 * (loudness * shape_tone + hum) + noise).astype(np.float32)


def render_clip(rng: np.random.Generator, label: int, size: int = NATIVE_SIZE, fps: float = FPS,
                seconds: float = SECONDS, rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """One clip of class `label`: (T, H, W, 3) uint8 frames and its float32 mono soundtrack."""
    frames = int(round(fps * seconds))
    base = np.asarray(SHAPES[CLASSES[label]], dtype=np.float32)
    size_factor = rng.uniform(0.38, 0.5)
    aspect = rng.uniform(0.85, 1.15)
    path = _path(rng, frames, size_factor * 1.25)
    bg, fg = _random_colour(rng), _random_colour(rng)
    while abs(_luma(fg) - _luma(bg)) < 0.25:
        fg = _random_colour(rng)
    grid = _grid(size)
    background = bg * _texture(rng, size, grid)[..., None]
    foreground = fg * _texture(rng, size, grid)[..., None]
    grain = rng.standard_normal((size, size, 3), dtype=np.float32) * 0.02  # fixed, so a still shape gives still frames
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        s = size_factor * path["scale"][t]
        cos, sin = np.cos(path["tilt"][t]), np.sin(path["tilt"][t])
        px, py = base[:, 0] * s * aspect, base[:, 1] * s / aspect
        poly = np.stack([px * cos - py * sin + path["x"][t], px * sin + py * cos + path["y"][t]], axis=1)
        mask = _rasterise(poly, size, 4)[..., None]
        image = mask * foreground + (1 - mask) * background + grain
        video[t] = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return video, _soundtrack(rng, label, path["speed"], fps, rate)


def generate_clips(n: int, seed: int, split: str, size: int = NATIVE_SIZE, fps: float = FPS, seconds: float = SECONDS
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames N x T x H x W x 3 uint8, labels N int64, soundtracks N x samples float32), classes
    balanced, deterministic by (seed, split)."""
    rng = np.random.default_rng(seed + _SPLIT_OFFSET[split])
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    clips = [render_clip(rng, int(y), size, fps, seconds) for y in labels]
    return np.stack([c[0] for c in clips]), labels.astype(np.int64), np.stack([c[1] for c in clips])
