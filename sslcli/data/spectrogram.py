"""A pure-torch audio front end: log (mel) spectrograms and batched waveform augmentation.

No torchaudio: the STFT is `torch.stft` and the mel filterbank is built here from the HTK formula,
so the front end runs on whatever device the waveform lives on and is pinned by golden tests.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch


def _hz_to_mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """(n_freqs, n_mels) triangular filters, HTK mel scale, peak 1 (no Slaney area normalisation).

    Filter centres are evenly spaced in mel between f_min and f_max (default sample_rate / 2); the
    frequency bins are `linspace(0, sample_rate / 2, n_freqs)`, as in a one-sided STFT.
    """
    nyquist = sample_rate / 2
    f_max = nyquist if f_max is None else float(f_max)
    if n_mels < 1:
        raise ValueError(f"n_mels must be at least 1, got {n_mels}")
    if f_max <= f_min:
        raise ValueError(f"f_max ({f_max}) must be greater than f_min ({f_min})")
    if f_max > nyquist:
        raise ValueError(f"f_max ({f_max}) is above the Nyquist frequency sample_rate/2 = {nyquist}; lower it")
    freqs = torch.linspace(0, nyquist, n_freqs, dtype=torch.float64)
    mels = torch.linspace(_hz_to_mel(float(f_min)), _hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    points = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    points[0], points[-1] = float(f_min), f_max  # exact band edges, free of the mel round trip
    left, centre, right = points[:-2], points[1:-1], points[2:]
    rising = (freqs[:, None] - left) / (centre - left)
    falling = (right - freqs[:, None]) / (right - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


@functools.lru_cache(maxsize=16)
def _cached_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float, device: str) -> torch.Tensor:
    return mel_filterbank(n_freqs, n_mels, sample_rate, f_min, f_max).to(device)


@dataclasses.dataclass(frozen=True)
class FrontEnd:
    """Waveform (..., samples) to a log spectrogram (..., 1, bins, frames), float32.

    Computes `torch.stft` (Hann window, center=True, zero padding), the power |X|^2, an optional
    mel filterbank, then `log(power + log_offset)`. The defaults follow Arandjelović & Zisserman's
    L3-Net: 1 s windows at 16 kHz, a 25 ms window and 10 ms hop, here with 64 log-mel bins;
    `scale="linear"` gives L3-Net's 257-bin log spectrogram. The channel dim of 1 feeds a
    one-channel CNN (timm `in_chans=1`). `f_max=0` means sample_rate / 2.
    """

    sample_rate: int = 16000
    seconds: float = 1.0
    n_fft: int = 512
    window: int = 400
    hop: int = 160
    scale: str = "mel"
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 0.0
    log_offset: float = 1e-6

    @property
    def samples(self) -> int:
        return int(round(self.sample_rate * self.seconds))

    @property
    def bins(self) -> int:
        return self.n_mels if self.scale == "mel" else self.n_fft // 2 + 1

    @property
    def frames(self) -> int:
        return 1 + self.samples // self.hop

    @property
    def top(self) -> float:
        """The upper edge of the mel filters in Hz."""
        return self.f_max if self.f_max > 0 else self.sample_rate / 2

    def check(self) -> None:
        """Raise ValueError naming the first bad field and how to fix it."""
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate={self.sample_rate} is too low; use at least 1000 Hz (e.g. 16000)")
        if self.seconds <= 0:
            raise ValueError(f"seconds={self.seconds} must be positive (e.g. 1.0)")
        if not 1 <= self.window <= self.n_fft:
            raise ValueError(f"window={self.window} must be between 1 and n_fft={self.n_fft}; raise n_fft or shorten window")
        if self.hop < 1:
            raise ValueError(f"hop={self.hop} must be at least 1 sample (e.g. 160 for 10 ms at 16 kHz)")
        if self.scale not in ("mel", "linear"):
            raise ValueError(f"scale={self.scale!r} is unknown; use 'mel' or 'linear'")
        if self.scale == "mel" and self.n_mels < 1:
            raise ValueError(f"n_mels={self.n_mels} must be at least 1")
        if self.f_max > self.sample_rate / 2:
            raise ValueError(f"f_max={self.f_max} is above sample_rate/2 = {self.sample_rate / 2}; lower it (0 means sample_rate/2)")
        if self.scale == "mel" and self.f_min >= self.top:
            raise ValueError(f"f_min={self.f_min} must be below f_max ({self.top}); lower f_min")

    def to_dict(self) -> dict:
        """The settings as plain json-able values, e.g. for a json file beside audio weights."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FrontEnd:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown front end setting(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        self.check()
        lead = wave.shape[:-1]
        x = wave.reshape(-1, wave.shape[-1]).to(torch.float32)
        win = torch.hann_window(self.window, periodic=True, device=x.device, dtype=torch.float32)
        spec = torch.stft(x, self.n_fft, hop_length=self.hop, win_length=self.window, window=win, center=True,
                          pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (N, n_fft//2+1, frames)
        if self.scale == "mel":
            fb = _cached_filterbank(self.n_fft // 2 + 1, self.n_mels, self.sample_rate, float(self.f_min), float(self.top),
                                    str(x.device))
            power = torch.matmul(power.transpose(1, 2), fb).transpose(1, 2)
        out = torch.log(power + self.log_offset)
        return out.reshape(*lead, 1, out.shape[-2], out.shape[-1])


def augment_audio(wave: torch.Tensor, gen: torch.Generator, gain_db: float = 6.0, shift: float = 0.0,
                  noise: float = 0.0) -> torch.Tensor:
    """Per-row random gain in [-gain_db, gain_db] dB, zero-filled time shift of up to shift * samples,
    and Gaussian noise of std noise * row RMS. wave is (B, samples); all draws come from `gen`."""
    if wave.ndim != 2:
        raise ValueError(f"augment_audio expects a (batch, samples) waveform, got shape {tuple(wave.shape)}")
    if gain_db < 0 or noise < 0 or not 0 <= shift <= 1:
        raise ValueError(f"need gain_db >= 0, 0 <= shift <= 1 and noise >= 0; got {gain_db}, {shift}, {noise}")
    x = wave if wave.is_floating_point() else wave.to(torch.float32)
    b, n = x.shape
    dev = x.device
    db = torch.rand(b, generator=gen, device=dev, dtype=x.dtype) * (2 * gain_db) - gain_db
    out = x * torch.pow(10.0, db / 20.0)[:, None]
    max_shift = int(math.floor(shift * n))
    if max_shift > 0:
        s = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen, device=dev)
        src = torch.arange(n, device=dev)[None, :] - s[:, None]
        valid = (src >= 0) & (src < n)
        out = torch.gather(out, 1, src.clamp(0, n - 1)) * valid.to(out.dtype)
    if noise > 0:
        rms = out.square().mean(dim=1, keepdim=True).sqrt() + 1e-8
        out = out + torch.randn(b, n, generator=gen, device=dev, dtype=out.dtype) * (noise * rms)
    return out
