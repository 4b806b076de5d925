"""Writing a clip source out as real video files: `sslcli write-clips`, so the decoder can be
exercised on known clips and users can watch the data. The folder it writes is itself a valid
`--data` source: `train/<class>/NNNN.mp4` and `val/<class>/NNNN.mp4` (or flat when unlabelled)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError
from .clips import ClipSplit
from .images import load_batches
from .media import write_clip


def write_clips(split: ClipSplit, classes: Optional[list[str]], folder: Path, limit: Optional[int] = None,
                extension: str = ".mp4") -> list[Path]:
    """Every clip of `split` (at most `limit`) as a video file at the split's rate and size, with
    its soundtrack as an AAC (webm: Opus) track when it has one; returns the files written."""
    count = len(split) if limit is None else min(limit, len(split))
    written = []
    for index in range(count):
        length = int(split.lengths[index])
        (frames, labels, _), = load_batches(split.for_eval(length), [torch.tensor([index])])  # every frame
        if not len(frames):
            continue
        label = int(labels[0])
        target = folder / (classes[label] if classes and label >= 0 else "") / f"{index:04d}{extension}"
        target.parent.mkdir(parents=True, exist_ok=True)
        audio = split.audio[index] if split.audio is not None else None
        write_clip(target, frames[0].permute(0, 2, 3, 1).numpy(), split.fps, audio, split.audio_rate or 16000)
        written.append(target)
    return written


def export_source(ds, out: Path, limit: Optional[int] = None, extension: str = ".mp4") -> dict:
    """`ds`'s splits as video files under `out` (train/ and val/ when it has a val split)."""
    if ds.kind != "video":
        raise UserError(f"'{ds.name}' holds images, not clips; write-clips takes synthetic:moving-shapes or a video folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out '{out}' exists and is not an empty folder; give a new folder")
    staging = out.with_name(f".{out.name}.{os.getpid()}.partial")  # a failure leaves no half-written --out
    files = {}
    try:
        for name, split in (("train", ds.train), ("val", ds.val)):
            if split is not None:
                folder = staging / name if ds.val is not None else staging
                files[name] = len(write_clips(split, ds.classes, folder, limit, extension))
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files
