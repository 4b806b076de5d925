"""Images as uint8 tensors: decoding and resizing one file, a split of images in memory or on
disk, and batches of them (decoded by worker processes when the split is not in memory).

Every split yields `(uint8 tensor 3xSxS, label)` with label -1 when unlabelled. Decoding and
resizing happen once per image; augmentation runs later on whole batches (see augment.py), so it
can run on the training device. Splits small enough are decoded once into memory.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from ..errors import UserError, first_line
from .damaged import BadImages

DECODE_SAMPLE = 16  # files decoded up front from a split too large to cache


def square(image, size: int) -> torch.Tensor:
    """A PIL image or an HxWx3 uint8 array with its shorter side resized to `size` (bilinear) and
    centre-cropped: a 3 x size x size uint8 tensor."""
    if isinstance(image, np.ndarray) and image.shape[:2] == (size, size):
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB")
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _decode_jpeg(data: bytes, size: int) -> Optional[np.ndarray]:
    """A JPEG's pixels (HxWx3 uint8) by libjpeg-turbo through simplejpeg, or None where it cannot
    (PIL then decodes the file, or says why it cannot). Like PIL's draft mode, a JPEG at least
    twice `size` on both sides decodes at 1/2, 1/4 or 1/8 scale, keeping both sides >= `size`."""
    import simplejpeg

    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        # PIL's choice of scale, not libjpeg-turbo's finer one (3/8, 5/8, ...): the same pixels as PIL
        k = next(k for k in (8, 4, 2, 1) if k <= min(w // size, h // size) or k == 1)
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-h // k), min_width=-(-w // k))
    except ValueError:
        return None


def load_image(path: Path, size: int) -> torch.Tensor:
    """Decode, resize the shorter side to `size` and centre-crop: a 3 x size x size uint8 tensor."""
    data = Path(path).read_bytes()
    if data[:2] == b"\xff\xd8":  # JPEG: simplejpeg decodes it 3x faster than PIL, to the same pixels
        pixels = _decode_jpeg(data, size)
        if pixels is not None:
            return square(pixels, size)
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when much larger
        return square(img.convert("RGB"), size)


def read_image(path: Path, size: int) -> tuple[Optional[torch.Tensor], str]:
    """`load_image`, or (None, why) for a file that is not a decodable image."""
    try:
        return load_image(path, size), ""
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged files
        return None, first_line(exc)


def decode_all(files: list[Path], size: int, threads: int) -> list[tuple[Optional[torch.Tensor], str]]:
    """`read_image` for every file, in order, on `threads` threads (the decoders release the GIL);
    each thread takes every `threads`-th file, since a task per file costs more than a small decode."""
    shares = [files[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(lambda share: [read_image(f, size) for f in share], shares))
    results: list = [None] * len(files)
    for i, share in enumerate(done):
        results[i::threads] = share
    return results


class LabelledItems:
    """What every split shares: its items' labels (int64, -1 where unlabelled)."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


@dataclass
class Split(LabelledItems):
    """One split: images in memory (N,3,S,S uint8) or as files decoded on demand.

    A split of clips (`clips.ClipSplit`) keeps the same interface, so the engine and evaluation
    treat both alike: `take` (in memory) and `read` (decoded on demand) give one item each,
    `stills` one picture per item, `for_epoch`/`for_eval` say which frames a clip item holds."""

    labels: torch.Tensor  # int64, -1 where unlabelled
    images: Optional[torch.Tensor] = None
    files: Optional[list[Path]] = None
    size: int = 0
    bad: Optional[BadImages] = field(default=None, repr=False)
    kind = "images"

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def take(self, idx: torch.Tensor) -> "Batch":
        """The batch of items `idx` of an in-memory split: (uint8 images, labels, idx)."""
        return Batch(self.images[idx], self.labels[idx], idx)

    def stills(self, indices: list[int]) -> list[Optional[torch.Tensor]]:
        """One 3xSxS uint8 picture per item (None where it cannot be decoded)."""
        return [self.read(i)[0] for i in indices]

    def for_epoch(self, seed: int, epoch: int) -> "Split":
        """The split as training epoch `epoch` reads it (clips choose their frames per epoch)."""
        return self

    def for_eval(self, frames: int) -> "Split":
        """The split as evaluation reads it (a clip: `frames` evenly spaced frames)."""
        return self

    def path(self, index: int) -> Path:
        return self.files[index]

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
            results = decode_all([self.files[i] for i in sample], self.size, threads)
            self._record_bad([self.files[i] for i in sample], results)
            return self
        results = decode_all(self.files, self.size, threads)
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


@dataclass
class Batch:
    """A batch as the data gives it: uint8 images (B, 3, S, S) or clips (B, T, 3, S, S), labels,
    the items' indices in their split, and for clips read with sound the audio around each frame
    (B, T, samples) float32. Unpacks as (images, labels, indices)."""

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    indices: torch.Tensor
    audio: Optional[torch.Tensor] = None

    @classmethod
    def of(cls, images: torch.Tensor, labels: Optional[torch.Tensor] = None, indices: Optional[torch.Tensor] = None,
           audio: Optional[torch.Tensor] = None) -> "Batch":
        """A batch of `images`, their indices 0..B-1 unless given: to call a method's `make_views`
        by hand."""
        return cls(images, labels, torch.arange(images.shape[0], device=images.device) if indices is None else indices,
                   audio)

    def __iter__(self):
        return iter((self.images, self.labels, self.indices))


def _collate(items: list[tuple]) -> tuple[Batch, list[tuple[int, str]]]:
    """Stack the decoded items of a batch (an item's first element is its image, or its frames and
    audio); the failed ones come back as (index, why)."""
    good = [item for item in items if item[0] is not None]
    sound = bool(good) and isinstance(good[0][0], tuple)
    pictures = [item[0][0] if sound else item[0] for item in good]
    images = torch.stack(pictures) if good else torch.zeros(0, dtype=torch.uint8)
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    index = torch.tensor([item[2] for item in good], dtype=torch.long)
    audio = torch.stack([item[0][1] for item in good]) if sound else None
    return Batch(images, labels, index, audio), [(item[2], item[3]) for item in items if item[0] is None]


def load_batches(split: Split, batches: list[torch.Tensor], workers: int = 0) -> Iterator[Batch]:
    """(uint8 images or clips, labels, indices) for each batch of split indices. Items that cannot
    be decoded are left out of their batch and recorded in `split.bad` (which may refuse the data)."""
    if split.in_memory:
        for idx in batches:
            yield split.take(idx)
        return
    if workers > 0:
        loader = torch.utils.data.DataLoader(
            _Reader(split), batch_sampler=[b.tolist() for b in batches], num_workers=workers, collate_fn=_collate
        )
    else:
        loader = (_collate([split.read(i) for i in idx.tolist()]) for idx in batches)
    for batch, failed in loader:
        for index, reason in failed:
            split.bad.add(split.path(index), reason)
        yield batch


class _Reader(torch.utils.data.Dataset):
    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.split.read(index)


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


