"""Data sources: what `--data` names, resolved into splits of fixed-size uint8 images.

Every split yields `(uint8 tensor 3xSxS, label)` with label -1 when unlabelled. Decoding and
resizing happen once per image; augmentation runs later on whole batches (see augment.py),
so it can run on the training device. Splits small enough are decoded once into memory.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
TORCHVISION_SOURCES = ("cifar10", "cifar100", "stl10")
SYNTHETIC_SOURCES = ("synthetic:shapes",)
HOLDOUT_FRACTION = 0.1  # val share carved out of a single labelled split


@dataclass
class Split:
    """One split: images in memory (N,3,S,S uint8) or as files decoded on demand."""

    labels: torch.Tensor  # int64, -1 where unlabelled
    images: Optional[torch.Tensor] = None
    files: Optional[list[Path]] = None
    size: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.images is not None:
            return self.images[index], int(self.labels[index])
        return load_image(self.files[index], self.size), int(self.labels[index])

    def subset(self, indices: torch.Tensor) -> "Split":
        return Split(
            labels=self.labels[indices],
            images=None if self.images is None else self.images[indices],
            files=None if self.files is None else [self.files[i] for i in indices.tolist()],
            size=self.size,
        )

    def cache(self, max_gb: float, workers: int = 0) -> "Split":
        """Decode every image once into memory when they fit within `max_gb`."""
        if self.images is not None or len(self) * 3 * self.size**2 > max_gb * 1e9:
            return self
        threads = max(1, workers or os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
            decoded = list(pool.map(lambda f: load_image(f, self.size), self.files))
        return Split(labels=self.labels, images=torch.stack(decoded), size=self.size)


@dataclass
class DataSource:
    name: str
    train: Split
    val: Optional[Split]
    classes: Optional[list[str]]
    image_size: int

    @property
    def labelled(self) -> bool:
        return self.train.labelled and self.val is not None and self.val.labelled


def per_class_sample(labels: torch.Tensor, seed: int, count: Callable[[int], int]) -> torch.Tensor:
    """Sorted indices of a seeded random `count(n)` of each class's `n` items."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)][: count(len(idx))])
    return torch.sort(torch.cat(keep)).values if keep else torch.zeros(0, dtype=torch.long)


def balanced_fraction(split: Split, fraction: float, seed: int) -> Split:
    """A seeded subset holding `fraction` of every class (at least one image each): the 1% / 10%
    semi-supervised protocol."""
    return split.subset(per_class_sample(split.labels, seed, lambda n: max(1, round(n * fraction))))


def load_image(path: Path, size: int) -> torch.Tensor:
    """Decode, resize the shorter side to `size` and centre-crop: a 3 x size x size uint8 tensor."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when much larger
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        if (w, h) != (size, size):
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _class_folder_split(root: Path, classes: Optional[list[str]] = None) -> tuple[list[Path], list[int], list[str]]:
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes or found
    files, labels = [], []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if _is_image(path):
                files.append(path)
                labels.append(index)
    return files, labels, classes


def _native_folder_size(files: list[Path]) -> int:
    with Image.open(files[0]) as img:
        return min(min(img.size), 224)


def _folder_source(root: Path, image_size: int | str, seed: int) -> DataSource:
    if not root.is_dir():
        raise UserError(f"data folder '{root}' is not a directory; give a folder of images or class subfolders")
    val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train_files, train_labels, classes = _class_folder_split(root / "train")
        val_files, val_labels, _ = _class_folder_split(val_dir, classes)
        if not train_files:
            raise UserError(f"no images found under '{root / 'train'}'; expected train/<class>/<image> files")
    else:
        subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        flat = sorted(p for p in root.iterdir() if _is_image(p))
        if subdirs and not flat:
            files, labels, classes = _class_folder_split(root)
            if not files:
                raise UserError(f"no images found in the class folders of '{root}'; add image files (.jpg, .png, ...)")
            # One labelled split: hold out a stratified, seeded share as val.
            val_mask = torch.zeros(len(files), dtype=torch.bool)
            holdout = per_class_sample(torch.tensor(labels), seed,
                                       lambda n: max(1, int(n * HOLDOUT_FRACTION)) if n > 1 else 0)
            val_mask[holdout] = True
            train_files = [f for f, m in zip(files, val_mask) if not m]
            train_labels = [y for y, m in zip(labels, val_mask) if not m]
            val_files = [f for f, m in zip(files, val_mask) if m]
            val_labels = [y for y, m in zip(labels, val_mask) if m]
        elif flat:
            size = _native_folder_size(flat) if image_size == "auto" else int(image_size)
            train = Split(labels=torch.full((len(flat),), -1, dtype=torch.long), files=flat, size=size)
            return DataSource(str(root), train, None, None, size)
        else:
            raise UserError(f"data folder '{root}' holds no images; expected images, class subfolders, or train/ and val/")
    size = _native_folder_size(train_files) if image_size == "auto" else int(image_size)
    train = Split(labels=torch.tensor(train_labels, dtype=torch.long), files=train_files, size=size)
    val = Split(labels=torch.tensor(val_labels, dtype=torch.long), files=val_files, size=size) if val_files else None
    return DataSource(str(root), train, val, classes, size)


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


def _torchvision_source(name: str, root: Optional[str], image_size: int | str, purpose: str) -> DataSource:
    import torchvision.datasets as tvd

    folder = Path(root or Path.home() / ".cache" / "sslcli" / "datasets" / name).expanduser()
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
            f"put the torchvision '{name}' files there or pass --set data.root=FOLDER"
        ) from None
    size = native if image_size == "auto" else int(image_size)
    splits = []
    for images, labels in pairs:
        if size != native:
            images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
            images = images.round().clamp(0, 255).to(torch.uint8)
        splits.append(Split(labels=labels.long(), images=images, size=size))
    return DataSource(name, splits[0], splits[1], classes, size)


def open_source(
    source: str,
    image_size: int | str = "auto",
    *,
    seed: int = 0,
    root: Optional[str] = None,
    purpose: str = "pretrain",
    synthetic_train: int = 2000,
    synthetic_val: int = 500,
    cache_max_gb: float = 4.0,
) -> DataSource:
    """Resolve `--data` into a DataSource; bad sources raise UserError naming the fix."""
    if source in SYNTHETIC_SOURCES:
        ds = _synthetic_source(source, image_size, seed, synthetic_train, synthetic_val)
    elif source.startswith("synthetic:"):
        raise UserError(f"unknown synthetic source '{source}'; available: {', '.join(SYNTHETIC_SOURCES)}")
    elif source.lower() in TORCHVISION_SOURCES:
        ds = _torchvision_source(source.lower(), root, image_size, purpose)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(
                f"data source '{source}' does not exist; give an image folder, "
                f"{', '.join(TORCHVISION_SOURCES)} or {', '.join(SYNTHETIC_SOURCES)}"
            )
        ds = _folder_source(path, image_size, seed)
    ds.train = ds.train.cache(cache_max_gb)
    if ds.val is not None:
        ds.val = ds.val.cache(cache_max_gb)
    return ds
