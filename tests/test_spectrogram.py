"""The audio front end: mel filterbank, log spectrograms pinned by golden numbers and a numpy reference, augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslcli.data.spectrogram import FrontEnd, augment_audio, mel_filterbank

SR = 16000


def _mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def _np_centres(n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Filter centre frequencies in Hz, straight from the HTK formula."""
    return _hz(np.linspace(_mel(f_min), _mel(f_max), n_mels + 2))[1:-1]


def _np_filterbank(n_freqs: int, n_mels: int, sr: int, f_min: float, f_max: float) -> np.ndarray:
    freqs = np.linspace(0, sr / 2, n_freqs)
    pts = _hz(np.linspace(_mel(f_min), _mel(f_max), n_mels + 2))
    fb = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        for k, f in enumerate(freqs):
            if lo < f <= c:
                fb[k, m] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[k, m] = (hi - f) / (hi - c)
    return fb


def _np_log_mel(x: np.ndarray, fe: FrontEnd) -> np.ndarray:
    """Independent reference: zero-padded frames, centred periodic Hann, rfft, power, mel, log."""
    pad = fe.n_fft // 2
    xp = np.concatenate([np.zeros(pad), x.astype(np.float64), np.zeros(pad)])
    n = np.arange(fe.window)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / fe.window)
    win = np.zeros(fe.n_fft)
    left = (fe.n_fft - fe.window) // 2
    win[left:left + fe.window] = hann
    frames = 1 + len(x) // fe.hop
    spec = np.stack([np.fft.rfft(xp[i * fe.hop:i * fe.hop + fe.n_fft] * win) for i in range(frames)], axis=1)
    power = np.abs(spec) ** 2  # (n_fft//2+1, frames)
    fb = _np_filterbank(fe.n_fft // 2 + 1, fe.n_mels, fe.sample_rate, fe.f_min, fe.sample_rate / 2)
    return np.log(fb.T @ power + fe.log_offset)


def _tone(freq: float, amp: float = 1.0, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(SR * seconds), dtype=torch.float64) / SR
    return (torch.sin(2 * math.pi * freq * t) * amp).float()


# ---- mel filterbank ---------------------------------------------------------------------------------------------


def test_filterbank_shape_peaks_and_centres() -> None:
    n_freqs, n_mels = 1025, 40
    fb = mel_filterbank(n_freqs, n_mels, SR)
    assert fb.shape == (n_freqs, n_mels) and fb.dtype == torch.float32
    assert (fb >= 0).all()
    peaks, where = fb.max(dim=0)
    assert (peaks <= 1.0 + 1e-6).all() and (peaks > 0.9).all()
    bin_hz = (SR / 2) / (n_freqs - 1)
    nearest = np.rint(_np_centres(n_mels, 0.0, SR / 2) / bin_hz).astype(int)
    assert where.numpy().tolist() == nearest.tolist()
    assert int((fb > 0).sum(dim=1).max()) <= 2
    # every frequency strictly inside the filters' range is covered by some filter
    assert ((fb > 0).sum(dim=1)[1:-1] >= 1).all()


def test_filterbank_matches_numpy_and_respects_band() -> None:
    fb = mel_filterbank(257, 64, SR, f_min=50.0, f_max=7000.0)
    ref = _np_filterbank(257, 64, SR, 50.0, 7000.0)
    np.testing.assert_allclose(fb.numpy(), ref, atol=1e-6)
    freqs = np.linspace(0, SR / 2, 257)
    outside = (freqs <= 50.0) | (freqs >= 7000.0)
    assert fb.numpy()[outside].max() == 0.0


@pytest.mark.parametrize(
    "kwargs, word",
    [({"n_mels": 0}, "n_mels"), ({"f_min": 4000.0, "f_max": 3000.0}, "f_max"), ({"f_max": 9000.0}, "Nyquist")],
)
def test_filterbank_refuses_bad_arguments(kwargs: dict, word: str) -> None:
    args = {"n_freqs": 257, "n_mels": 64, "sample_rate": SR} | kwargs
    with pytest.raises(ValueError, match=word):
        mel_filterbank(**args)


# ---- front end: shapes, golden tone positions, golden numbers ---------------------------------------------------


def test_shapes_frames_and_bins() -> None:
    fe = FrontEnd()
    assert (fe.samples, fe.bins, fe.frames) == (16000, 64, 101)
    lin = FrontEnd(scale="linear")
    assert lin.bins == 257
    x = torch.randn(16000)
    assert fe(x).shape == (1, 64, 101) and fe(x).dtype == torch.float32
    assert lin(x).shape == (1, 257, 101)
    batch = torch.randn(2, 3, 16000)
    out = fe(batch)
    assert out.shape == (2, 3, 1, 64, 101)
    torch.testing.assert_close(out[1, 2], fe(batch[1, 2]), rtol=1e-5, atol=1e-5)
    assert FrontEnd(seconds=0.5, hop=100).frames == 1 + 8000 // 100


def test_linear_tone_peaks_in_bin_32() -> None:
    out = FrontEnd(scale="linear")(_tone(1000.0))[0]  # (257, 101)
    assert (out[:, 3:-3].argmax(dim=0) == 32).all()


def test_mel_tone_peaks_in_nearest_filter() -> None:
    out = FrontEnd()(_tone(1000.0))[0]  # (64, 101)
    expected = int(np.argmin(np.abs(_np_centres(64, 0.0, SR / 2) - 1000.0)))
    assert (out[:, 3:-3].argmax(dim=0) == expected).all()


# Pinned once from this implementation (and checked against the numpy reference below): 0.5 * sin(2 pi 440 t), 1 s.
GOLDEN_FRAME_MEANS = {0: -9.03748607635498, 10: 5.39357328414917, 20: -9.104803085327148,
                      40: -13.482868194580078, 63: -13.571486473083496}
GOLDEN_MEAN = -9.812350273132324


def test_golden_numbers_default_mel() -> None:
    out = FrontEnd()(_tone(440.0, amp=0.5))[0]
    means = out.mean(dim=1)
    for b, value in GOLDEN_FRAME_MEANS.items():
        assert means[b].item() == pytest.approx(value, rel=1e-4), b
    assert out.mean().item() == pytest.approx(GOLDEN_MEAN, rel=1e-4)


@pytest.mark.parametrize("signal", ["tone", "noise"])
def test_matches_numpy_reference(signal: str) -> None:
    fe = FrontEnd()
    x = _tone(440.0, amp=0.5) if signal == "tone" else torch.randn(16000, generator=torch.Generator().manual_seed(3)) * 0.1
    ref = _np_log_mel(x.double().numpy(), fe)
    np.testing.assert_allclose(fe(x)[0].numpy(), ref, atol=1e-3)


def test_silence_is_log_offset() -> None:
    fe = FrontEnd(log_offset=1e-5)
    for scale in ("mel", "linear"):
        out = FrontEnd(scale=scale, log_offset=1e-5)(torch.zeros(2, 16000))
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, torch.full_like(out, math.log(fe.log_offset)), rtol=1e-6, atol=1e-6)


# ---- settings -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("window", 600), ("hop", 0), ("scale", "db"), ("sample_rate", 500), ("seconds", 0.0), ("f_max", 9000.0)],
)
def test_check_names_bad_field(field: str, value) -> None:
    FrontEnd().check()
    bad = FrontEnd(**{field: value})
    with pytest.raises(ValueError, match=rf"\b{field}="):
        bad.check()
    with pytest.raises(ValueError, match=rf"\b{field}="):
        bad(torch.zeros(16000))


def test_dict_round_trip_and_unknown_key() -> None:
    fe = FrontEnd(scale="linear", seconds=0.96, n_mels=40, f_max=7600.0)
    d = fe.to_dict()
    assert d["scale"] == "linear" and d["f_max"] == 7600.0
    assert FrontEnd.from_dict(d) == fe
    assert FrontEnd.from_dict({}) == FrontEnd()
    with pytest.raises(ValueError, match="n_mel"):
        FrontEnd.from_dict(d | {"n_mel": 64})


# ---- augmentation ------------------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_is_seeded() -> None:
    wave = torch.randn(8, 4000, generator=_gen(0))
    a = augment_audio(wave, _gen(1), shift=0.2, noise=0.1)
    b = augment_audio(wave, _gen(1), shift=0.2, noise=0.1)
    c = augment_audio(wave, _gen(2), shift=0.2, noise=0.1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert a is not wave and not torch.equal(a, wave)


def test_gain_only_scales_within_range() -> None:
    wave = torch.randn(64, 2000, generator=_gen(0)) + 0.01
    out = augment_audio(wave, _gen(5), gain_db=6.0)
    ratio = out / wave
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5, atol=1e-6)
    rms_db = 20 * torch.log10(out.square().mean(1).sqrt() / wave.square().mean(1).sqrt())
    assert (rms_db.abs() <= 6.0 + 1e-4).all()
    assert rms_db.max() > 2.0 and rms_db.min() < -2.0
    torch.testing.assert_close(augment_audio(wave, _gen(5), gain_db=0.0), wave)


def test_shift_moves_click_without_wrapping() -> None:
    n, shift = 4000, 0.1
    limit = int(shift * n)
    clicks = torch.zeros(32, n)
    clicks[:, 2000] = 1.0
    out = augment_audio(clicks, _gen(0), gain_db=0.0, shift=shift)
    assert ((out != 0).sum(dim=1) == 1).all()
    moved = out.argmax(dim=1) - 2000
    assert (moved.abs() <= limit).all() and moved.unique().numel() > 5
    # a ramp: the shifted copy is the ramp displaced, zero filled, never wrapped around
    ramp = torch.arange(1, n + 1, dtype=torch.float32).expand(32, n).contiguous()
    out = augment_audio(ramp, _gen(1), gain_db=0.0, shift=shift)
    assert (out[:, 1:-1] != 0).sum() > 0
    for row in out:
        nz = (row != 0).nonzero().flatten()
        first, last = int(nz[0]), int(nz[-1])
        s = first - int(row[first].item()) + 1  # displacement of the ramp
        assert abs(s) <= limit
        assert (nz == torch.arange(first, last + 1)).all()  # one contiguous piece
        torch.testing.assert_close(row[first:last + 1], ramp[0, first - s:last + 1 - s])
        assert (first == 0) == (s <= 0) and (last == n - 1) == (s >= 0)


def test_noise_level_follows_rms() -> None:
    wave = torch.randn(16, 8000, generator=_gen(0)) * torch.linspace(0.1, 2.0, 16)[:, None]
    out = augment_audio(wave, _gen(3), gain_db=0.0, noise=0.1)
    ratio = (out - wave).std(dim=1) / wave.square().mean(1).sqrt()
    assert ((ratio - 0.1).abs() < 0.01).all()


def test_augment_refuses_wrong_shape() -> None:
    with pytest.raises(ValueError, match="batch, samples"):
        augment_audio(torch.zeros(2, 1, 100), _gen(0))
