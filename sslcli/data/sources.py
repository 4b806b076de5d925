"""Data sources: what `--data` names, resolved into splits of fixed-size uint8 images.

Every split yields `(uint8 tensor 3xSxS, label)` with label -1 when unlabelled. Decoding and
resizing happen once per image; augmentation runs later on whole batches (see augment.py),
so it can run on the training device. Splits small enough are decoded once into memory.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
TORCHVISION_SOURCES = ("cifar10", "cifar100", "stl10")
SYNTHETIC_SOURCES = ("synthetic:shapes",)
HOLDOUT_FRACTION = 0.1  # val share carved out of a single labelled split
DECODE_SAMPLE = 16  # files decoded up front from a split too large to cache
WARN_FIRST = 5  # bad images named on stderr; the rest are only listed in skipped.txt


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class BadImages:
    """Images that cannot be decoded: skipped, counted and listed. When more than `max_fraction`
    of the source's `total` images are bad, the source is refused (wrong folder, broken copy)."""

    def __init__(self, source: str, total: int, max_fraction: float, warn: Callable[[str], None] = _warn):
        self.source, self.total, self.max_fraction, self.warn = source, total, max_fraction, warn
        self.found: dict[Path, str] = {}

    def __len__(self) -> int:
        return len(self.found)

    def add(self, path: Path, reason: str) -> None:
        if path in self.found:
            return
        self.found[path] = reason
        self.check()
        if len(self.found) <= WARN_FIRST:
            more = "" if len(self.found) < WARN_FIRST else " (further ones are only listed in skipped.txt)"
            self.warn(f"skipped unreadable image '{path}': {reason}{more}")

    def check(self) -> None:
        if len(self.found) > self.max_fraction * self.total:
            path, reason = next(iter(self.found.items()))
            raise UserError(
                f"{len(self.found)} of {self.total} images of '{self.source}' cannot be decoded, more than "
                f"data.max_bad_fraction={self.max_fraction:g} (first: '{path}': {reason}); "
                f"repair or remove them, or raise data.max_bad_fraction"
            )

    def lines(self) -> str:
        return "".join(f"{path}\t{reason}\n" for path, reason in self.found.items())


def read_image(path: Path, size: int) -> tuple[Optional[torch.Tensor], str]:
    """`load_image`, or (None, why) for a file that is not a decodable image."""
    try:
        return load_image(path, size), ""
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged files
        return None, (str(exc).splitlines() or [type(exc).__name__])[0][:200] or type(exc).__name__


@dataclass
class Split:
    """One split: images in memory (N,3,S,S uint8) or as files decoded on demand."""

    labels: torch.Tensor  # int64, -1 where unlabelled
    images: Optional[torch.Tensor] = None
    files: Optional[list[Path]] = None
    size: int = 0
    bad: Optional[BadImages] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.images is not None:
            return self.images[index], int(self.labels[index])
        return load_image(self.files[index], self.size), int(self.labels[index])

    def read(self, index: int) -> tuple[Optional[torch.Tensor], int, int, str]:
        """(image or None, label, index, why it failed): safe to call in DataLoader workers."""
        if self.images is not None:
            return self.images[index], int(self.labels[index]), index, ""
        image, reason = read_image(self.files[index], self.size)
        return image, int(self.labels[index]), index, reason

    def subset(self, indices: torch.Tensor) -> "Split":
        return Split(
            labels=self.labels[indices],
            images=None if self.images is None else self.images[indices],
            files=None if self.files is None else [self.files[i] for i in indices.tolist()],
            size=self.size,
            bad=self.bad,
        )

    def cache(self, max_gb: float, workers: int = 0) -> "Split":
        """Decode every image once into memory when they fit within `max_gb`; undecodable ones
        are left out (and recorded in `bad`). A larger split decodes a sample to check it."""
        if self.images is not None:
            return self
        threads = max(1, workers or os.cpu_count() or 1)
        if len(self) * 3 * self.size**2 > max_gb * 1e9:
            step = max(1, len(self) // DECODE_SAMPLE)
            sample = list(range(0, len(self), step))[:DECODE_SAMPLE]
            with ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(lambda i: read_image(self.files[i], self.size), sample))
            self._record_bad([self.files[i] for i in sample], results)
            return self
        with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
            results = list(pool.map(lambda f: read_image(f, self.size), self.files))
        self._record_bad(self.files, results)
        keep = [i for i, (image, _) in enumerate(results) if image is not None]
        return Split(labels=self.labels[keep], images=torch.stack([results[i][0] for i in keep]), size=self.size,
                     bad=self.bad)

    def _record_bad(self, files: list[Path], results: list[tuple[Optional[torch.Tensor], str]]) -> None:
        failed = [(path, reason) for path, (image, reason) in zip(files, results) if image is None]
        if failed and len(failed) == len(files):
            path, reason = failed[0]
            raise UserError(f"none of the {len(files)} images tried in '{path.parent}' can be decoded (first: '{path}': "
                            f"{reason}); give a folder of JPEG/PNG images")
        for path, reason in failed:
            self.bad.add(path, reason)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _collate(items: list[tuple[Optional[torch.Tensor], int, int, str]]) -> tuple[Batch, list[tuple[int, str]]]:
    good = [item for item in items if item[0] is not None]
    images = torch.stack([item[0] for item in good]) if good else torch.zeros(0, dtype=torch.uint8)
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    index = torch.tensor([item[2] for item in good], dtype=torch.long)
    return (images, labels, index), [(item[2], item[3]) for item in items if item[0] is None]


def load_batches(split: Split, batches: list[torch.Tensor], workers: int = 0) -> Iterator[Batch]:
    """(uint8 images, labels, indices) for each batch of split indices. Images that cannot be
    decoded are left out of their batch and recorded in `split.bad` (which may refuse the data)."""
    if split.images is not None:
        for idx in batches:
            yield split.images[idx], split.labels[idx], idx
        return
    if workers > 0:
        loader = torch.utils.data.DataLoader(
            _Reader(split), batch_sampler=[b.tolist() for b in batches], num_workers=workers, collate_fn=_collate
        )
    else:
        loader = (_collate([split.read(i) for i in idx.tolist()]) for idx in batches)
    for batch, failed in loader:
        for index, reason in failed:
            split.bad.add(split.files[index], reason)
        yield batch


class _Reader(torch.utils.data.Dataset):
    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.split.read(index)


@dataclass
class DataSource:
    name: str
    train: Split
    val: Optional[Split]
    classes: Optional[list[str]]
    image_size: int

    kind: str = "images"
    bad: Optional[BadImages] = None

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
    """The smaller side of the first decodable of the first few files (at most 224)."""
    for path in files[:DECODE_SAMPLE]:
        try:
            with Image.open(path) as img:
                return min(min(img.size), 224)
        except Exception:  # damaged files are reported when the split is decoded
            continue
    raise UserError(f"none of the first {min(len(files), DECODE_SAMPLE)} images in '{files[0].parent}' can be decoded "
                    f"(first: '{files[0]}'); give a folder of JPEG/PNG images")


def _folder_source(root: Path, image_size: int | str, seed: int) -> DataSource:
    if not root.is_dir():
        raise UserError(f"data folder '{root}' is not a directory; give a folder of images or class subfolders")
    try:
        return _read_folder(root, image_size, seed)
    except PermissionError as exc:
        raise UserError(f"data folder '{exc.filename or root}' cannot be read (permission denied); "
                        f"fix its permissions or copy the data somewhere readable") from None


def _read_folder(root: Path, image_size: int | str, seed: int) -> DataSource:
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


def _torchvision_source(name: str, root: Optional[str], image_size: int | str, purpose: str,
                        root_hint: str) -> DataSource:
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


def open_source(
    source: str,
    image_size: int | str = "auto",
    *,
    seed: int = 0,
    root: Optional[str] = None,
    purpose: str = "pretrain",
    root_hint: str = "pass --set data.root=FOLDER",
    synthetic_train: int = 2000,
    synthetic_val: int = 500,
    cache_max_gb: float = 4.0,
    max_bad_fraction: float = 0.01,
    warn: Callable[[str], None] = _warn,
) -> DataSource:
    """Resolve `--data` into a DataSource; bad sources raise UserError naming the fix (`root_hint`
    says how this command names the folder of a torchvision set). Images that cannot be decoded
    are skipped and recorded in `DataSource.bad`."""
    if source in SYNTHETIC_SOURCES:
        ds = _synthetic_source(source, image_size, seed, synthetic_train, synthetic_val)
    elif source.startswith("synthetic:"):
        raise UserError(f"unknown synthetic source '{source}'; available: {', '.join(SYNTHETIC_SOURCES)}")
    elif source.lower() in TORCHVISION_SOURCES:
        ds = _torchvision_source(source.lower(), root, image_size, purpose, root_hint)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(
                f"data source '{source}' does not exist; give an image folder, "
                f"{', '.join(TORCHVISION_SOURCES)} or {', '.join(SYNTHETIC_SOURCES)}"
            )
        ds = _folder_source(path, image_size, seed)
    ds.bad = BadImages(source, len(ds.train) + (len(ds.val) if ds.val is not None else 0), max_bad_fraction, warn)
    for split in (ds.train, ds.val):
        if split is not None:
            split.bad = ds.bad
    ds.train = ds.train.cache(cache_max_gb)
    if ds.val is not None:
        ds.val = ds.val.cache(cache_max_gb)
    return ds
