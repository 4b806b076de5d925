"""Data sources: what `--data` names, resolved into splits of fixed-size uint8 images or clips.

Images: `synthetic:shapes`, image folders, `cifar10`, `cifar100`, `stl10`. Clips:
`synthetic:moving-shapes` and folders of video files or frame folders, in the same layouts
(see folders.py). Splits small enough are decoded once into memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..errors import UserError
from ..files import cache_dir
from .clips import ClipSplit, FramePlan, SoundPlan, index_clips
from .damaged import BadImages, _warn
from .folders import frame_files, holds_video, read_layout
from .images import DECODE_SAMPLE, Split

TORCHVISION_SOURCES = ("cifar10", "cifar100", "stl10")
SYNTHETIC_SOURCES = ("synthetic:shapes", "synthetic:moving-shapes")
NATIVE_MAX = 224  # auto image size: the data's own, at most this


@dataclass(frozen=True)
class ClipSettings:
    """How clips are read: frames per second, frames per training item, longest stretch used."""

    fps: float = 8.0
    clip_frames: int = 16
    max_seconds: float = 30.0
    min_frames: int = 1  # shorter clips are skipped (training: clip_frames)


@dataclass
class DataSource:
    name: str
    train: Union[Split, ClipSplit]
    val: Optional[Union[Split, ClipSplit]]
    classes: Optional[list[str]]
    image_size: int

    kind: str = "images"
    bad: Optional[BadImages] = None

    @property
    def labelled(self) -> bool:
        return self.train.labelled and self.val is not None and self.val.labelled


def _synthetic_source(name: str, image_size: int | str, seed: int, n_train: int, n_val: int) -> DataSource:
    from . import synthetic

    size = synthetic.NATIVE_SIZE if image_size == "auto" else int(image_size)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        images, labels = synthetic.generate_shapes(n, seed, split, size)
        splits[split] = Split(
            labels=torch.from_numpy(labels), images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), size=size
        )
    return DataSource(name, splits["train"], splits["val"], list(synthetic.CLASSES), size)


def _moving_shapes_source(name: str, image_size: int | str, seed: int, n_train: int, n_val: int,
                          clips: ClipSettings) -> DataSource:
    from . import moving_shapes as ms

    size = ms.NATIVE_SIZE if image_size == "auto" else int(image_size)
    if clips.fps * ms.SECONDS < 2:
        raise UserError(f"synthetic:moving-shapes clips last {ms.SECONDS} s: at {clips.fps:g} frames per second they "
                        f"hold fewer than 2 frames; use fps {2 / ms.SECONDS:g} or more")
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        frames, labels, audio = ms.generate_clips(n, seed, split, size, fps=clips.fps)  # drawn at the size asked for
        video = torch.from_numpy(frames).flatten(0, 1).permute(0, 3, 1, 2).contiguous()
        lengths = torch.full((n,), frames.shape[1], dtype=torch.long)
        splits[split] = ClipSplit(labels=torch.from_numpy(labels), lengths=lengths, size=size, fps=clips.fps,
                                  plan=FramePlan(clips.clip_frames), frames=video, offsets=torch.arange(n) * frames.shape[1],
                                  audio=list(audio), audio_rate=ms.SAMPLE_RATE)
    return DataSource(name, splits["train"], splits["val"], list(ms.CLASSES), size, kind="video")


def _torchvision_source(name: str, root: Optional[str], image_size: int | str, purpose: str,
                        root_hint: str) -> DataSource:
    import torchvision.datasets as tvd

    folder = Path(root).expanduser() if root else cache_dir("datasets", name)
    native = 96 if name == "stl10" else 32
    try:
        if name == "stl10":
            train_split = "train+unlabeled" if purpose == "pretrain" else "train"
            train = tvd.STL10(str(folder), split=train_split, download=True)
            val = tvd.STL10(str(folder), split="test", download=True)
            pairs = [(torch.from_numpy(d.data), torch.from_numpy(d.labels.astype(np.int64))) for d in (train, val)]
            classes = list(train.classes)
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            train = cls(str(folder), train=True, download=True)
            val = cls(str(folder), train=False, download=True)
            pairs = [(torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(d.targets)) for d in (train, val)]
            classes = list(train.classes)
    except (OSError, RuntimeError) as exc:
        raise UserError(
            f"could not load or download '{name}' into '{folder}' ({str(exc).splitlines()[0][:120]}); "
            f"put the torchvision '{name}' files there or {root_hint} to name the folder that holds them"
        ) from None
    size = native if image_size == "auto" else int(image_size)
    splits = []
    for images, labels in pairs:
        if size != native:
            images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
            images = images.round().clamp(0, 255).to(torch.uint8)
        splits.append(Split(labels=labels.long(), images=images, size=size))
    return DataSource(name, splits[0], splits[1], classes, size)


def _native_size(split: Split) -> int:
    """The smaller side of the first decodable of the first few images (at most 224)."""
    from PIL import Image

    for path in split.files[:DECODE_SAMPLE]:
        try:
            with Image.open(path) as img:
                return min(min(img.size), NATIVE_MAX)
        except Exception:  # damaged files are reported when the split is decoded
            continue
    raise UserError(f"none of the first {min(len(split), DECODE_SAMPLE)} images in '{split.files[0].parent}' can be "
                    f"decoded (first: '{split.files[0]}'); give a folder of JPEG/PNG images")


def _image_folder(root: Path, image_size: int | str, seed: int) -> DataSource:
    layout = read_layout(root, "images", seed)
    train = Split(labels=torch.tensor(layout.train_labels, dtype=torch.long), files=layout.train)
    size = _native_size(train) if image_size == "auto" else int(image_size)
    train.size = size
    val = Split(labels=torch.tensor(layout.val_labels, dtype=torch.long), files=layout.val, size=size) if layout.val else None
    return DataSource(str(root), train, val, layout.classes, size)


def _clip_folder(root: Path, image_size: int | str, seed: int, clips: ClipSettings, bad: BadImages) -> DataSource:
    """Clips of a folder, indexed (cached by path, size and mtime); damaged clips are recorded in
    `bad`, clips shorter than `clips.min_frames` skipped with their length. Nothing is said on
    stderr until the clips are known to be usable, so a refusal is one line."""
    layout = read_layout(root, "video", seed)
    bad.noun, bad.total = "clip", len(layout.train) + len(layout.val)
    splits, size, failures = [], None, []
    for items, labels in ((layout.train, layout.train_labels), (layout.val, layout.val_labels)):
        keep, lengths, sounds = [], [], []
        for i, entry in enumerate(index_clips(root, items, clips.fps)):
            if "error" in entry:
                failures.append((items[i], entry["error"], True))
                continue
            info = entry["info"]
            frames = min(int(math.floor(info["duration"] * clips.fps + 1e-6)), int(clips.max_seconds * clips.fps))
            if frames < clips.min_frames:
                failures.append((items[i], f"too short: {info['duration']:.2f} s gives {frames} frames at "
                                           f"data.fps={clips.fps:g}, fewer than the {clips.min_frames} frames an item "
                                           f"needs (data.clip_frames)", False))
                continue
            if size is None and "width" in info:
                size = min(info["width"], info["height"], NATIVE_MAX)
            keep.append(i)
            lengths.append(frames)
            sounds.append(info.get("audio_rate", 0) > 0)
        splits.append(ClipSplit(labels=torch.tensor([labels[i] for i in keep], dtype=torch.long),
                                lengths=torch.tensor(lengths, dtype=torch.long), size=0, fps=clips.fps,
                                plan=FramePlan(clips.clip_frames), paths=[items[i] for i in keep], bad=bad,
                                has_audio=torch.tensor(sounds, dtype=torch.bool)))
    train, val = splits
    damaged = [(path, reason) for path, reason, counted in failures if counted]
    if len(damaged) > bad.max_fraction * bad.total:
        bad.found.update(damaged)
        bad.check()
    if not len(train):
        path, reason, _ = failures[0] if failures else (root, "no clips found", True)
        raise UserError(f"none of the {len(layout.train)} clips of '{root}' can be used (first: '{path}': {reason}); "
                        f"give video files (.mp4, .webm, ...) of at least {clips.min_frames / clips.fps:g} s")
    for path, reason, counted in failures:
        (bad.add if counted else bad.skip)(path, reason)
    if image_size == "auto":
        size = size or _frame_folder_size(train)
    else:
        size = int(image_size)
    for split in splits:
        split.size = size
    return DataSource(str(root), train, val if len(val) else None, layout.classes, size, kind="video")


def _frame_folder_size(split: ClipSplit) -> int:
    """The smaller side of the first frame of the first clip (at most 224)."""
    from PIL import Image

    first = split.paths[0]
    if first.is_dir():
        first = frame_files(first)[0]
    with Image.open(first) as img:
        return min(min(img.size), NATIVE_MAX)


def _folder_source(root: Path, image_size: int | str, seed: int, kind: str, clips: ClipSettings,
                   bad: BadImages) -> DataSource:
    if not root.is_dir():
        raise UserError(f"data folder '{root}' is not a directory; give a folder of images, videos or class subfolders")
    try:
        if kind == "video" or (kind == "auto" and holds_video(root)):
            return _clip_folder(root, image_size, seed, clips, bad)
        return _image_folder(root, image_size, seed)
    except PermissionError as exc:
        raise UserError(f"data folder '{exc.filename or root}' cannot be read (permission denied); "
                        f"fix its permissions or copy the data somewhere readable") from None


def open_source(
    source: str,
    image_size: int | str = "auto",
    *,
    seed: int = 0,
    root: Optional[str] = None,
    purpose: str = "pretrain",
    root_hint: str = "pass --set data.root=FOLDER",
    synthetic_train: int | str = "auto",
    synthetic_val: int | str = "auto",
    cache_max_gb: float = 4.0,
    max_bad_fraction: float = 0.01,
    kind: str = "auto",
    clips: ClipSettings = ClipSettings(),
    warn: Callable[[str], None] = _warn,
) -> DataSource:
    """Resolve `--data` into a DataSource; bad sources raise UserError naming the fix (`root_hint`
    says how this command names the folder of a torchvision set). Items that cannot be decoded
    are skipped and recorded in `DataSource.bad`. `kind` "video" reads a folder's frame folders
    as clips (auto: clips when the folder holds video files)."""
    bad = BadImages(source, 0, max_bad_fraction, warn, "clip" if kind == "video" else "image")
    if source == "synthetic:shapes":
        ds = _synthetic_source(source, image_size, seed, _count(synthetic_train, 2000), _count(synthetic_val, 500))
    elif source == "synthetic:moving-shapes":
        ds = _moving_shapes_source(source, image_size, seed, _count(synthetic_train, 400), _count(synthetic_val, 100),
                                   clips)
    elif source.startswith("synthetic:"):
        raise UserError(f"unknown synthetic source '{source}'; available: {', '.join(SYNTHETIC_SOURCES)}")
    elif source.lower() in TORCHVISION_SOURCES:
        ds = _torchvision_source(source.lower(), root, image_size, purpose, root_hint)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(
                f"data source '{source}' does not exist; give an image or video folder, "
                f"{', '.join(TORCHVISION_SOURCES)} or {', '.join(SYNTHETIC_SOURCES)}"
            )
        ds = _folder_source(path, image_size, seed, kind, clips, bad)
    if ds.kind == "images" and kind == "video":
        raise UserError(f"'{source}' holds images, but clips were asked for (data.kind=video); give a folder of "
                        f"video files or frame folders, or synthetic:moving-shapes")
    bad.noun = "clip" if ds.kind == "video" else "image"
    bad.total = len(ds.train) + (len(ds.val) if ds.val is not None else 0) + len(bad)
    bad.check()
    ds.bad = bad
    for split in (ds.train, ds.val):
        if split is not None:
            split.bad = bad
    ds.train = ds.train.cache(cache_max_gb)
    if ds.val is not None:
        ds.val = ds.val.cache(cache_max_gb)
    return ds


def _count(value: int | str, default: int) -> int:
    return default if value == "auto" else int(value)


def hear(ds: DataSource, plan: SoundPlan, who: str) -> DataSource:
    """`ds` with its clips read with sound (see `ClipSplit.with_sound`); clips without an audio
    stream are listed as skipped, and data with no clip that has one is refused, naming `who`
    needs it."""
    if ds.kind != "video":
        raise UserError(f"{who} learns from the sound of video clips, but '{ds.name}' holds {ds.kind}; give a folder "
                        f"of video files with sound, or synthetic:moving-shapes")
    known = ds.train.has_audio
    # with no clip known to have sound, refuse before any clip is reported skipped: one line
    train = None if known is not None and not bool(known.any()) else ds.train.with_sound(plan)
    if train is None or not len(train):
        raise UserError(f"{who} learns from sound, but none of the {len(ds.train)} training clips of '{ds.name}' has "
                        f"an audio stream; give video files with a soundtrack")
    val = ds.val.with_sound(plan) if ds.val is not None else None
    return replace(ds, train=train, val=val if val is not None and len(val) else None)

