"""All media I/O: reading and writing video files (and their soundtracks) through PyAV.

PyAV's wheels carry FFmpeg, so nothing else needs installing; it lives in the `video` extra
and is imported only here, when a video source is opened. Frames come back as uint8 RGB
arrays, upright (rotation metadata applied) and in full range whatever the file's pixel
format (8 or 10 bit, limited or full range); sound as float32 mono at the rate asked for.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import UserError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v"}


def require_av():
    """The `av` module, or a one-line refusal naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise UserError("video data needs PyAV, which is not installed; pip install 'sslcli[video]' "
                        "(or pip install av)") from None
    av.logging.set_level(av.logging.PANIC)  # damaged files are reported by us, once, not by FFmpeg per packet
    return av


@dataclass(frozen=True)
class ClipInfo:
    """What indexing a clip finds: enough to plan its frames without decoding it again."""

    duration: float  # seconds of video
    fps: float  # the stream's average frame rate
    frames: int  # decoded or estimated frame count
    width: int  # as displayed (after rotation)
    height: int
    audio_rate: int  # 0 when the clip has no sound
    audio_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def has_audio(self) -> bool:
        return self.audio_rate > 0


def _rotation(frame) -> int:
    """The quarter turns (counter-clockwise, 0-3) that bring `frame` upright."""
    angle = getattr(frame, "rotation", 0) or 0
    return int(round(angle / 90.0)) % 4


def probe_clip(path: Path) -> ClipInfo:
    """Index one video file: duration, rate, frame count, displayed size and its sound. Decodes
    the first frame (so a file whose video cannot be decoded fails here) and, when the container
    reports no frame count (webm, mkv), estimates it from duration x rate."""
    av = require_av()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        if rate <= 0:
            raise ValueError("no frame rate")
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        if duration <= 0 and container.duration:
            duration = container.duration / 1_000_000
        first = next(container.decode(stream), None)
        if first is None:
            raise ValueError("no decodable frame")
        frames = int(stream.frames) if stream.frames else int(round(duration * rate))
        width, height = first.width, first.height
        if _rotation(first) % 2:
            width, height = height, width
        audio_rate, audio_seconds = 0, 0.0
        if container.streams.audio:
            audio = container.streams.audio[0]
            audio_rate = int(audio.rate or audio.codec_context.sample_rate or 0)
            if audio.duration is not None and audio.time_base is not None:
                audio_seconds = float(audio.duration * audio.time_base)
            elif container.duration:
                audio_seconds = container.duration / 1_000_000
    if frames < 1:
        raise ValueError("no frames")
    return ClipInfo(duration=max(duration, frames / rate), fps=rate, frames=frames, width=width, height=height,
                    audio_rate=audio_rate, audio_seconds=audio_seconds)


def _to_rgb(frame) -> np.ndarray:
    """An upright uint8 RGB array of a decoded frame, full range whatever its pixel format."""
    source_range = frame.color_range if frame.color_range in (1, 2) else None  # 1 limited, 2 full
    rgb = frame.reformat(format="rgb24", src_color_range=source_range, dst_color_range="JPEG").to_ndarray()
    turns = _rotation(frame)
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def read_frames(path: Path, times: list[float]) -> list[np.ndarray]:
    """The frames shown at each of `times` (seconds, ascending): for each time, the last frame
    whose timestamp is at or before it. Seeks to the keyframe before the first time, then
    decodes forward, so the frame asked for is the one returned, not the keyframe's."""
    av = require_av()
    if not times:
        return []
    out: list[Optional[np.ndarray]] = [None] * len(times)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if times[0] > 0 and stream.time_base is not None:
            container.seek(int(times[0] / stream.time_base), stream=stream, backward=True, any_frame=False)
        wanted, previous = 0, None
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else 0.0
            while wanted < len(times) and t > times[wanted] + 1e-6:
                # this frame comes after the time asked for: the one before it was on screen then
                out[wanted] = previous if previous is not None else _to_rgb(frame)
                wanted += 1
            if wanted == len(times):
                break
            previous = _to_rgb(frame)
        while wanted < len(times):  # times at or past the last frame
            if previous is None:
                raise ValueError("no decodable frame")
            out[wanted] = previous
            wanted += 1
    return out  # type: ignore[return-value]


AAC_PRIMING = 1024  # samples an AAC encoder puts before the sound; MP4/MOV/MKV say so, AVI cannot


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """The first audio stream as float32 mono at `sample_rate` Hz, sample 0 at the first video
    frame's time; an empty array without sound. The AAC encoder's start padding is dropped: MP4,
    MOV and MKV record it (FFmpeg trims it), AVI cannot, so there the 1024 priming samples are cut."""
    av = require_av()
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return np.zeros(0, dtype=np.float32)
        stream = container.streams.audio[0]
        video = container.streams.video[0] if container.streams.video else None
        decoded = container.decode(stream)
        first = next(decoded, None)
        if first is None:
            return np.zeros(0, dtype=np.float32)
        wave = _mono(itertools.chain([first], decoded), sample_rate)
        video_start = float(video.start_time * video.time_base) if video is not None and video.start_time else 0.0
        shift = (first.time or 0.0) - video_start  # seconds the sound starts after the first frame
        if stream.codec_context.name == "aac" and container.format.name == "avi":
            shift -= AAC_PRIMING / float(stream.rate or sample_rate)
    lead = int(round(shift * sample_rate))
    if lead > 0:
        return np.concatenate([np.zeros(lead, dtype=np.float32), wave])
    return wave[-lead:]


def resample(wave: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """Float32 mono `wave` at `rate` Hz resampled to `sample_rate` Hz (FFmpeg's resampler)."""
    if rate == sample_rate or not len(wave):
        return np.asarray(wave, dtype=np.float32)
    av = require_av()
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave, dtype=np.float32).reshape(1, -1), format="flt",
                                       layout="mono")
    frame.sample_rate = rate
    return _mono([frame], sample_rate)


def _mono(frames: Iterable, sample_rate: int) -> np.ndarray:
    """Audio frames through FFmpeg's resampler (flushed at the end) as one float32 mono array."""
    resampler = require_av().AudioResampler(format="flt", layout="mono", rate=sample_rate)
    parts = [out.to_ndarray().reshape(-1) for frame in itertools.chain(frames, [None])
             for out in resampler.resample(frame)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)


def write_clip(path: Path, frames: np.ndarray, fps: float, audio: Optional[np.ndarray] = None,
               sample_rate: int = 16000, codec: str = "libx264", rotation: int = 0,
               pixel_format: str = "yuv420p") -> None:
    """Write (T, H, W, 3) uint8 frames as a video file at `fps`, with `audio` (float mono in
    [-1, 1]) as an AAC track (Opus in .webm) when given. `rotation` (degrees counter-clockwise)
    is stored as display metadata, as phones do; H and W must be even for 4:2:0 video."""
    av = require_av()
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_clip expects (T, H, W, 3) uint8 frames, got shape {frames.shape}")
    webm = path.suffix.lower() == ".webm"
    rate = Fraction(fps).limit_denominator(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx" if webm else codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pixel_format
        if codec == "libx264" and not webm:
            stream.options = {"crf": "18", "preset": "veryfast"}
        stream.codec_context.max_b_frames = 0  # AVI stores no reordering: B-frames there shift the timestamps
        if rotation:
            stream.set_display_rotation(rotation)
        sound = None
        if audio is not None and len(audio):
            sound = container.add_stream("libopus" if webm else "aac", rate=sample_rate, layout="mono")
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index  # in the stream's time base, 1/fps: without it AVI's mpeg4 leaves gaps
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32), -1, 1)
            step = 1024
            for start in range(0, len(samples), step):
                chunk = samples[start:start + step].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
