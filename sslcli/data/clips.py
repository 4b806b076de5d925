"""Clips as uint8 tensors: a split of clips, each a run of frames at `data.fps` and
`data.image_size`, in memory or decoded on demand, with the same interface as an image `Split`.

Which frames a clip item holds is a `FramePlan`: in training a window of `data.clip_frames`
consecutive frames at a start drawn from (seed, epoch, clip), so a resumed run sees the same
frames; in evaluation `frames` evenly spaced over the whole clip. A batch of clips is a
(B, T, 3, S, S) uint8 tensor. A split read with sound (`with_sound`) also gives, for each frame,
the `SoundPlan.seconds` of sound around it: (B, T, samples) float32.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import UserError, first_line
from ..files import cache_dir
from . import media
from .damaged import BadImages
from .folders import frame_files
from .images import Batch, LabelledItems, load_image, read_image, square

INDEX_VERSION = 1


@dataclass(frozen=True)
class FramePlan:
    """Which `count` frames of a clip of `length` frames an item holds."""

    count: int
    mode: str = "window"  # "window": consecutive, seeded start; "spread": evenly spaced
    seed: int = 0
    epoch: int = 0

    def positions(self, clip: int, length: int) -> list[int]:
        if self.mode == "spread" or length <= self.count:
            return [min(length - 1, int((i + 0.5) * length / self.count)) for i in range(self.count)]
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + clip)
        start = int(torch.randint(length - self.count + 1, (1,), generator=gen))
        return list(range(start, start + self.count))


@dataclass(frozen=True)
class SoundPlan:
    """How a clip is heard: mono at `rate` Hz, `seconds` of sound around each frame."""

    rate: int = 16000
    seconds: float = 1.0

    @property
    def samples(self) -> int:
        return int(round(self.rate * self.seconds))


def sound_windows(wave: np.ndarray, positions: list[int], fps: float, plan: SoundPlan) -> torch.Tensor:
    """(len(positions), samples) float32: for each frame (its index at `fps`) the `plan.seconds`
    of `wave` centred on the frame's middle, moved inside the soundtrack near its ends (so a
    window never says where in the clip it is by its silence), zero-filled past a short one."""
    n = plan.samples
    out = np.zeros((len(positions), n), dtype=np.float32)
    for row, p in enumerate(positions):
        start = int(round((p + 0.5) / fps * plan.rate - n / 2))
        start = max(0, min(start, len(wave) - n))
        piece = wave[start:start + n]
        out[row, :len(piece)] = piece
    return torch.from_numpy(out)


@dataclass
class ClipSplit(LabelledItems):
    """One split of clips: frames in memory (`frames`, all clips end to end, with `offsets`) or
    decoded on demand from `paths` (video files or frame folders). `lengths` counts each clip's
    frames at `fps`; `audio` holds float32 mono soundtracks (at `audio_rate`) where they are in
    memory, `has_audio` says which clips have an audio stream (None: not known)."""

    labels: torch.Tensor
    lengths: torch.Tensor
    size: int
    fps: float
    plan: FramePlan
    paths: Optional[list[Path]] = None
    frames: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None
    audio: Optional[list[np.ndarray]] = None
    audio_rate: int = 0
    bad: Optional[BadImages] = field(default=None, repr=False)
    has_audio: Optional[torch.Tensor] = None
    sound: Optional[SoundPlan] = None
    kind = "video"

    @property
    def in_memory(self) -> bool:
        return self.frames is not None

    def path(self, index: int) -> Path:
        return self.paths[index] if self.paths is not None else Path(f"clip-{index}")

    def for_epoch(self, seed: int, epoch: int) -> "ClipSplit":
        return replace(self, plan=replace(self.plan, mode="window", seed=seed, epoch=epoch))

    def for_eval(self, frames: int) -> "ClipSplit":
        return replace(self, plan=FramePlan(frames, "spread"))

    def _positions(self, index: int) -> list[int]:
        return self.plan.positions(index, int(self.lengths[index]))

    def take(self, idx: torch.Tensor) -> Batch:
        positions = {i: self._positions(i) for i in idx.tolist()}
        rows = [int(self.offsets[i]) + p for i, at in positions.items() for p in at]
        clips = self.frames[torch.tensor(rows, dtype=torch.long)].view(len(idx), self.plan.count, *self.frames.shape[1:])
        audio = None
        if self.sound is not None:
            audio = torch.stack([sound_windows(self.audio[i], at, self.fps, self.sound) for i, at in positions.items()])
        return Batch(clips, self.labels[idx], idx, audio)

    def read(self, index: int) -> tuple[Optional[torch.Tensor], int, int, str]:
        """(T x 3 x S x S frames or None, label, index, why it failed): safe in DataLoader workers.
        Read with sound, the first element is (frames, T x samples audio)."""
        if self.in_memory:
            batch = self.take(torch.tensor([index]))
            item = batch.images[0] if batch.audio is None else (batch.images[0], batch.audio[0])
            return item, int(self.labels[index]), index, ""
        positions = self._positions(index)
        frames, reason = decode_clip(self.paths[index], self.size, self.fps, positions)
        if frames is None or self.sound is None:
            return frames, int(self.labels[index]), index, reason
        wave, reason = decode_audio(self.paths[index], self.sound.rate)
        if wave is None:
            return None, int(self.labels[index]), index, reason
        return (frames, sound_windows(wave, positions, self.fps, self.sound)), int(self.labels[index]), index, ""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """The clip's middle frame and its label (what a picture of the clip shows)."""
        return self.stills([index])[0], int(self.labels[index])

    def stills(self, indices: list[int]) -> list[Optional[torch.Tensor]]:
        """Each clip's middle frame."""
        middle = replace(self, plan=FramePlan(1, "spread"), sound=None)
        return [None if (item := middle.read(i)[0]) is None else item[0] for i in indices]

    def subset(self, indices: torch.Tensor) -> "ClipSplit":
        pick = indices.tolist()
        kept = dict(labels=self.labels[indices], lengths=self.lengths[indices],
                    has_audio=None if self.has_audio is None else self.has_audio[indices],
                    paths=None if self.paths is None else [self.paths[i] for i in pick],
                    audio=None if self.audio is None else [self.audio[i] for i in pick])
        if self.frames is None:
            return replace(self, **kept)
        rows = torch.cat([torch.arange(int(self.offsets[i]), int(self.offsets[i]) + int(self.lengths[i])) for i in pick]) \
            if pick else torch.zeros(0, dtype=torch.long)
        offsets = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), kept["lengths"]]), 0)[:-1]
        return replace(self, **kept, frames=self.frames[rows], offsets=offsets)

    def cache(self, max_gb: float, workers: int = 0) -> "ClipSplit":
        """Decode every clip once into memory when its frames fit within `max_gb`; clips that
        cannot be decoded are left out and recorded in `bad`."""
        if self.in_memory or int(self.lengths.sum()) * 3 * self.size**2 > max_gb * 1e9:
            return self
        threads = max(1, workers or os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(lambda i: decode_clip(self.paths[i], self.size, self.fps,
                                                          list(range(int(self.lengths[i])))), range(len(self))))
        keep = []
        for i, (frames, reason) in enumerate(results):
            if frames is None:
                self.bad.add(self.paths[i], reason)
            else:
                keep.append(i)
        if not keep:
            raise UserError(f"none of the {len(self)} clips of '{self.paths[0].parent}' can be decoded "
                            f"(first: '{self.paths[0]}': {results[0][1]}); give a folder of video files")
        lengths = torch.tensor([len(results[i][0]) for i in keep], dtype=torch.long)
        return replace(self, labels=self.labels[keep], lengths=lengths, paths=[self.paths[i] for i in keep],
                       frames=torch.cat([results[i][0] for i in keep]),
                       offsets=torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), lengths]), 0)[:-1],
                       audio=None if self.audio is None else [self.audio[i] for i in keep],
                       has_audio=None if self.has_audio is None else self.has_audio[keep])

    def with_sound(self, plan: SoundPlan, workers: int = 0) -> "ClipSplit":
        """The split read with sound: each item also carries the audio around its frames. Clips
        without an audio stream are left out and listed as skipped; soundtracks are held in memory
        at `plan.rate` when the frames are, else decoded with them."""
        split = self
        if self.has_audio is not None and not bool(self.has_audio.all()):
            for i in torch.nonzero(~self.has_audio).flatten().tolist():
                self.bad.skip(self.path(i), "no audio stream")
            split = self.subset(torch.nonzero(self.has_audio).flatten())
        if split.audio is not None:
            audio = [media.resample(wave, split.audio_rate, plan.rate) for wave in split.audio]
        elif split.in_memory and len(split):
            with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
                results = list(pool.map(lambda path: decode_audio(path, plan.rate), split.paths))
            for path, (wave, reason) in zip(split.paths, results):
                if wave is None:
                    self.bad.add(path, reason)
            keep = [i for i, (wave, _) in enumerate(results) if wave is not None]
            if len(keep) < len(split):
                split = split.subset(torch.tensor(keep, dtype=torch.long))
            audio = [results[i][0] for i in keep]
        else:
            audio = None
        return replace(split, sound=plan, audio=audio, audio_rate=plan.rate if audio is not None else 0)


def decode_clip(path: Path, size: int, fps: float, positions: list[int]) -> tuple[Optional[torch.Tensor], str]:
    """Frames `positions` (counted at `fps` from the clip's start) of a video file or frame folder,
    each resized and centre-cropped to `size`: (len(positions), 3, S, S) uint8, or (None, why)."""
    try:
        if path.is_dir():
            files = frame_files(path)
            frames = [load_image(files[min(p, len(files) - 1)], size) for p in positions]
            return torch.stack(frames), ""
        arrays = media.read_frames(path, [p / fps for p in positions])
        return torch.stack([square(a, size) for a in arrays]), ""
    except UserError:
        raise
    except Exception as exc:  # PyAV and PIL raise many types for damaged files
        return None, first_line(exc)


def decode_audio(path: Path, rate: int) -> tuple[Optional[np.ndarray], str]:
    """A clip's soundtrack at `rate` Hz, or (None, why); a frame folder has no sound."""
    if path.is_dir():
        return None, "a folder of frames has no sound"
    try:
        return media.read_audio(path, rate), ""
    except UserError:
        raise
    except Exception as exc:  # PyAV raises many types for damaged streams
        return None, first_line(exc)


# ---------------------------------------------------------------- the index

def _cache_file(root: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
    return cache_dir("clips", f"{key}.json")


def _stamp(path: Path) -> list:
    """What says a file is unchanged: its size and mtime (a frame folder: its newest file's)."""
    if path.is_dir():
        files = list(path.iterdir())
        return [len(files), max((f.stat().st_mtime_ns for f in files), default=0)]
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _probe(path: Path, fps: float) -> dict:
    """A clip's index entry: {'info': {...}} or {'error': why}."""
    try:
        if path.is_dir():
            files = frame_files(path)
            image, reason = read_image(files[0], 8)
            if image is None:
                return {"error": reason}
            return {"info": {"duration": len(files) / fps, "fps": fps, "frames": len(files), "audio_rate": 0}}
        return {"info": media.probe_clip(path).to_dict()}
    except UserError:
        raise
    except Exception as exc:  # damaged, empty or foreign files
        return {"error": first_line(exc)}


def index_clips(root: Path, paths: list[Path], fps: float, threads: int = 0) -> list[dict]:
    """The index entry of every clip, read from sslcli's cache folder where the file's size and
    mtime still match, probed otherwise; the cache is rewritten (never the user's folder)."""
    cache_path = _cache_file(root)
    try:
        cached = json.loads(cache_path.read_text())
        if cached.get("version") != INDEX_VERSION:
            cached = {}
    except (OSError, ValueError):
        cached = {}
    entries = cached.get("clips", {}) if isinstance(cached.get("clips"), dict) else {}
    stamps = [_stamp(p) for p in paths]
    todo = [i for i, p in enumerate(paths)
            if (entries.get(str(p)) or {}).get("stamp") != stamps[i] or (p.is_dir() and "info" in entries.get(str(p), {})
                                                                       and entries[str(p)]["info"]["fps"] != fps)]
    if todo:
        with ThreadPoolExecutor(max(1, threads or os.cpu_count() or 1)) as pool:
            for i, entry in zip(todo, pool.map(lambda i: _probe(paths[i], fps), todo)):
                entries[str(paths[i])] = {"stamp": stamps[i], **entry}
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(cache_path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": INDEX_VERSION, "root": str(root), "clips": entries}))
            os.replace(tmp, cache_path)
        except OSError:  # a read-only home costs only the probing next time
            pass
    return [entries[str(p)] for p in paths]
