"""The folder layouts `--data FOLDER` accepts, for images and for clips alike: `train/` and
`val/` (or `test/`) of class folders; one folder of class folders, from which a seeded,
stratified share is held out as val; or a flat folder (unlabelled). An item is an image file,
or for clips a video file or a folder of frames (`<clip>/<frame>.jpg`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError
from .images import per_class_sample
from .media import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
HOLDOUT_FRACTION = 0.1  # val share carved out of a single labelled split
KIND_SCAN = 2000  # entries looked at to tell a video folder from an image folder


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and _visible(path)


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and _visible(path)


def frame_files(folder: Path) -> list[Path]:
    """The frames of a frame folder, in name order."""
    return sorted(p for p in folder.iterdir() if is_image(p))


def is_frame_folder(path: Path) -> bool:
    """A folder whose own files are images: one clip, its frames in name order."""
    return path.is_dir() and _visible(path) and any(is_image(p) for p in path.iterdir())


def holds_video(root: Path) -> bool:
    """Whether a folder holds video files (looking at the first few thousand entries)."""
    return any(is_video(p) for p in itertools.islice(root.rglob("*"), KIND_SCAN))


def _items_below(folder: Path, kind: str) -> list[Path]:
    """The items under `folder`, sorted: image files, or video files and frame folders."""
    if kind == "images":
        return [p for p in sorted(folder.rglob("*")) if is_image(p)]
    found = []
    for entry in sorted(folder.iterdir()):
        if is_video(entry) or is_frame_folder(entry):
            found.append(entry)
        elif entry.is_dir() and _visible(entry):
            found.extend(_items_below(entry, kind))
    return found


def _class_items(root: Path, kind: str, classes: Optional[list[str]] = None) -> tuple[list[Path], list[int], list[str]]:
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and _visible(d))
    classes = classes or found
    items, labels = [], []
    for index, name in enumerate(classes):
        if (root / name).is_dir():
            below = _items_below(root / name, kind)
            items += below
            labels += [index] * len(below)
    return items, labels, classes


@dataclass
class Layout:
    """The items of a folder source and their labels (-1 when unlabelled)."""

    train: list[Path]
    train_labels: list[int]
    val: list[Path]
    val_labels: list[int]
    classes: Optional[list[str]]


def read_layout(root: Path, kind: str, seed: int) -> Layout:
    """The items of `root` for `kind` ("images" or "video"), refusing a folder that holds none."""
    noun = "images" if kind == "images" else "clips (video files or folders of frames)"
    val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train, train_labels, classes = _class_items(root / "train", kind)
        val, val_labels, _ = _class_items(val_dir, kind, classes)
        if not train:
            raise UserError(f"no {noun} found under '{root / 'train'}'; expected train/<class>/<item> files")
        return Layout(train, train_labels, val, val_labels, classes)
    subdirs = [d for d in root.iterdir() if d.is_dir() and _visible(d)]
    flat = [p for p in sorted(root.iterdir()) if (is_image(p) if kind == "images" else is_video(p) or is_frame_folder(p))]
    if kind == "video" and subdirs and all(is_frame_folder(d) for d in subdirs):
        flat, subdirs = sorted(set(flat) | set(subdirs)), []  # folders of frames side by side: unlabelled clips
    if subdirs and not flat:
        items, labels, classes = _class_items(root, kind)
        if not items:
            raise UserError(f"no {noun} found in the class folders of '{root}'; add "
                            f"{'image files (.jpg, .png, ...)' if kind == 'images' else 'video files (.mp4, ...)'}")
        # one labelled split: hold out a stratified, seeded share as val
        held = set(per_class_sample(torch.tensor(labels), seed,
                                    lambda n: max(1, int(n * HOLDOUT_FRACTION)) if n > 1 else 0).tolist())
        keep = [i for i in range(len(items)) if i not in held]
        out = sorted(held)
        return Layout([items[i] for i in keep], [labels[i] for i in keep], [items[i] for i in out],
                      [labels[i] for i in out], classes)
    if flat:
        return Layout(flat, [-1] * len(flat), [], [], None)
    if kind == "video" and any(is_image(p) for p in itertools.islice(root.rglob("*"), KIND_SCAN)):
        raise UserError(f"data folder '{root}' holds images, not clips; give video files (.mp4, .webm, ...) or "
                        f"folders of frames, or a method that trains on images")
    raise UserError(f"data folder '{root}' holds no {noun}; expected {noun}, class subfolders, or train/ and val/")
