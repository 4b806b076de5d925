"""Video files through PyAV, clip folders and their index, synthetic:moving-shapes, and image
methods and evaluation on clips. Every clip is written by the test itself."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from sslcli.data import media  # noqa: E402
from sslcli.data.clips import FramePlan  # noqa: E402
from sslcli.data.media import probe_clip, read_audio, read_frames, write_clip  # noqa: E402
from sslcli.data.sources import ClipSettings, open_source  # noqa: E402
from sslcli.methods.base import MethodContext


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCLI_CACHE", str(tmp_path / "cache"))


BLOCK = 16  # a 64 x 48 frame shows its index as 6 bits, one 16-px block each (white for 1)


def coded(index: int) -> np.ndarray:
    frame = np.full((48, 64, 3), 30, np.uint8)
    for bit in range(6):
        if (index >> bit) & 1:
            row, col = divmod(bit, 3)
            frame[row * BLOCK + 4:(row + 1) * BLOCK + 4, col * BLOCK + 8:(col + 1) * BLOCK + 8] = 230
    return frame


def index_of(frame: np.ndarray) -> int:
    bits = [frame[(b // 3) * BLOCK + 12, (b % 3) * BLOCK + 16].mean() > 128 for b in range(6)]
    return sum(int(v) << b for b, v in enumerate(bits))


def coded_clip(path: Path, frames: int = 40, fps: float = 8, **kw) -> Path:
    write_clip(path, np.stack([coded(i) for i in range(frames)]), fps, **kw)
    return path


def tone(seconds: float, rate: int = 16000, pitch: float = 440.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * pitch * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def test_a_clip_with_sound_reads_back_as_written(tmp_path):
    path = coded_clip(tmp_path / "a.mp4", 40, 8, audio=tone(5.0), sample_rate=16000)
    info = probe_clip(path)
    assert (info.frames, info.fps, info.width, info.height) == (40, 8.0, 64, 48)
    assert info.duration == pytest.approx(5.0, abs=0.01) and info.audio_rate == 16000
    assert info.audio_seconds == pytest.approx(5.0, abs=0.1)
    sound = read_audio(path, 16000)
    assert len(sound) / 16000 == pytest.approx(5.0, abs=0.1)  # AAC adds about 1,024 samples of padding
    spectrum = np.abs(np.fft.rfft(sound[8000:72000]))
    assert np.fft.rfftfreq(64000, 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=2)
    assert [index_of(f) for f in read_frames(path, [i / 8 for i in range(40)])] == list(range(40))


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov", ".webm", ".avi"])
def test_seeking_lands_on_the_frame_asked_for(tmp_path, ext):
    path = coded_clip(tmp_path / f"a{ext}", 40, 8, codec="mpeg4" if ext == ".avi" else "libx264")
    wanted = [0, 7, 13, 25, 39]
    assert [index_of(f) for f in read_frames(path, [i / 8 for i in wanted])] == wanted
    # a time between two frames shows the earlier one; later ones seek past several keyframes
    assert [index_of(f) for f in read_frames(path, [20.6 / 8, 33 / 8])] == [20, 33]
    assert abs(probe_clip(path).frames - 40) <= 1  # webm and mkv store no count: estimated from duration x rate


def test_rotated_ten_bit_and_full_range_clips_decode_upright_and_in_true_colour(tmp_path):
    frame = np.full((32, 64, 3), (200, 40, 120), np.uint8)
    frame[:8, :8] = (10, 250, 20)  # a green mark in the top-left corner
    frames = np.stack([frame] * 3)
    for name, kw in [("ten-bit", {"pixel_format": "yuv420p10le"}), ("full-range", {"pixel_format": "yuvj420p"}),
                     ("plain", {})]:
        out = read_frames(write_clip_to(tmp_path / f"{name}.mp4", frames, **kw), [0.0])[0]
        assert np.abs(out[20, 40].astype(int) - (200, 40, 120)).max() <= 4, name
        assert np.abs(out[3, 3].astype(int) - (10, 250, 20)).max() <= 6, name
    rotated = write_clip_to(tmp_path / "phone.mp4", frames, rotation=90)  # stored wide, shown tall
    info = probe_clip(rotated)
    assert (info.width, info.height) == (32, 64)
    out = read_frames(rotated, [0.0])[0]
    assert out.shape == (64, 32, 3)
    # turned a quarter counter-clockwise, the top-left corner comes to the bottom-left
    assert np.abs(out[60, 3].astype(int) - (10, 250, 20)).max() <= 6
    assert np.abs(out[3, 3].astype(int) - (200, 40, 120)).max() <= 6


def write_clip_to(path: Path, frames: np.ndarray, **kw) -> Path:
    write_clip(path, frames, 8, **kw)
    return path


def clip_folder(root: Path, per_class: int = 3, frames: int = 24) -> Path:
    for c, cls in enumerate(("one", "two")):
        for i in range(per_class):
            clip = np.stack([np.roll(coded(t), 2 * t, axis=1) // (1 + c) for t in range(frames)])
            write_clip(root / cls / f"{i}.mp4", clip, 8)
    return root


def test_a_clip_folder_is_indexed_once_into_the_cache_never_into_the_data(tmp_path, monkeypatch):
    data = clip_folder(tmp_path / "data")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    calls = []
    real = media.probe_clip
    monkeypatch.setattr(media, "probe_clip", lambda p: calls.append(p) or real(p))
    ds = open_source(str(data), 32, clips=ClipSettings(clip_frames=16))
    assert ds.kind == "video" and len(ds.train) + len(ds.val) == 6 and ds.classes == ["one", "two"]
    assert len(calls) == 6 and sorted(p.relative_to(data) for p in data.rglob("*")) == before
    index = list((tmp_path / "cache" / "clips").glob("*.json"))
    assert len(index) == 1 and len(json.loads(index[0].read_text())["clips"]) == 6
    open_source(str(data), 32, clips=ClipSettings(clip_frames=16))
    assert len(calls) == 6  # nothing changed: nothing probed
    changed = data / "one" / "0.mp4"
    write_clip(changed, np.stack([coded(t) for t in range(30)]), 8)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    ds = open_source(str(data), 32, clips=ClipSettings(clip_frames=16))
    assert calls[6:] == [changed]  # only the changed file is probed again
    assert sorted(ds.train.lengths.tolist() + ds.val.lengths.tolist()) == [24] * 5 + [30]


def test_clips_are_decoded_at_the_rate_asked_for_whether_cached_or_streamed(tmp_path):
    path = coded_clip(tmp_path / "flat" / "a.mp4", 40, 16)  # 2.5 s at 16 fps
    coded_clip(tmp_path / "flat" / "b.mp4", 40, 16)
    for cache in (4.0, 0.0):
        ds = open_source(str(path.parent), 48, cache_max_gb=cache, clips=ClipSettings(fps=8, clip_frames=4))
        assert ds.train.lengths.tolist() == [20, 20] and ds.train.in_memory == (cache > 0)
        clip, _, _, reason = ds.train.for_eval(5).read(0)
        assert reason == "" and clip.shape == (5, 3, 48, 48)
        # 5 frames spread over 20 at 8 fps: positions 2, 6, 10, 14, 18, that is frames 4, 12, 20, 28, 36 at 16 fps
        frames = [index_of(np.asarray(torch.nn.functional.interpolate(f[None].float(), size=(48, 64))[0]
                                      .permute(1, 2, 0).byte())) for f in clip]
        assert len(set(frames)) == 5


def test_frame_plans_are_a_function_of_seed_epoch_and_clip():
    plan = FramePlan(4, "window", seed=0, epoch=3)
    assert plan.positions(7, 20) == plan.positions(7, 20)
    starts = {FramePlan(4, "window", 0, e).positions(7, 20)[0] for e in range(30)}
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 16
    assert FramePlan(4, "spread").positions(0, 20) == [2, 7, 12, 17]
    assert FramePlan(4, "window").positions(0, 3) == [0, 1, 1, 2]  # shorter than the plan: spread, repeating


def test_moving_shapes_are_deterministic_labelled_clips_with_a_soundtrack():
    a = open_source("synthetic:moving-shapes", 32, synthetic_train=20, synthetic_val=10)
    b = open_source("synthetic:moving-shapes", 32, synthetic_train=20, synthetic_val=10)
    assert a.kind == "video" and len(a.train) == 20 and len(a.val) == 10 and len(a.classes) == 10
    assert torch.equal(a.train.frames, b.train.frames) and torch.equal(a.train.labels, b.train.labels)
    assert a.train.frames.shape == (20 * 32, 3, 32, 32) and a.train.audio_rate == 16000
    assert len(a.train.audio[0]) == 4 * 16000
    clips = a.train.frames.view(20, 32, 3, 32, 32).float()
    moving = (clips[:, 1:] - clips[:, :-1]).abs().mean((2, 3, 4)) > 0
    assert 0.3 < moving.float().mean() < 0.95  # it moves, and holds still for stretches
    # the class's tone is louder while the shape moves (hums at other pitches come and go over it)
    from sslcli.data.moving_shapes import PITCHES

    spectrum = torch.fft.rfft(torch.from_numpy(a.train.audio[0]).view(32, 2000), dim=1).abs()  # 8 Hz a bin
    pitch = PITCHES[int(a.train.labels[0])]
    tone = spectrum[:, int(pitch * 0.97 / 8):int(pitch * 1.03 / 8) + 2].amax(1)
    assert tone[moving[0].nonzero().flatten() + 1].mean() > 1.5 * tone[(~moving[0]).nonzero().flatten() + 1].mean()


def test_image_methods_take_frames_and_time_contrastive_pairs_stay_within_the_window():
    from sslcli.backbones import create_backbone
    from sslcli.recipe import resolve_recipe
    from sslcli.registry import get_method

    raw = {"method": {"name": "simclr"}, "data": {"image_size": 8, "fps": 8},
           "augment": {"time_window": 0.25}, "backbone": {"small_input": False}}
    recipe = resolve_recipe(raw, lambda n: get_method(n).Config)
    backbone, info = create_backbone("resnet18", False, 8)
    simclr = get_method("simclr")(MethodContext(recipe, backbone, info.feature_dim, 8))
    clips = torch.arange(16, dtype=torch.uint8).view(1, 16, 1, 1, 1).expand(500, 16, 3, 8, 8).contiguous()
    pairs = simclr.take_frames(clips, torch.Generator().manual_seed(0))
    assert pairs.shape == (500, 2, 3, 8, 8)
    first, second = pairs[:, 0, 0, 0, 0].long(), pairs[:, 1, 0, 0, 0].long()
    assert (first - second).abs().max() == 2 and (first != second).float().mean() > 0.5  # 0.25 s at 8 fps
    from sslcli.methods.base import Method

    frames = Method.take_frames(simclr, clips, torch.Generator().manual_seed(0))  # what single-view methods see
    assert frames.shape == (500, 3, 8, 8) and len(frames[:, 0, 0, 0].unique()) == 16


def test_clip_features_are_the_mean_over_evenly_spaced_frames():
    from sslcli.data.clips import ClipSplit
    from sslcli.evaluation.features import extract_features

    frames = torch.randint(0, 255, (2 * 6, 3, 16, 16), dtype=torch.uint8)
    split = ClipSplit(labels=torch.tensor([0, 1]), lengths=torch.tensor([6, 6]), size=16, fps=8,
                      plan=FramePlan(3, "spread"), frames=frames, offsets=torch.tensor([0, 6]))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    feats, labels = extract_features(model, split, torch.device("cpu"), precision="fp32", normalize=False)
    from sslcli.data.augment import eval_view

    with torch.no_grad():
        expected = torch.stack([model(eval_view(frames[[1, 3, 5]])).mean(0), model(eval_view(frames[[7, 9, 11]])).mean(0)])
    assert torch.allclose(feats, expected, atol=1e-5) and labels.tolist() == [0, 1]


@pytest.mark.slow
def test_time_contrastive_simclr_trains_on_clips(cli, tmp_path):
    r = cli("pretrain", "--method", "simclr", "--data", "synthetic:moving-shapes", "--set", "data.synthetic_train=64",
            "--set", "data.synthetic_val=20", "--set", "data.image_size=32", "--batch-size", "32", "--epochs", "1",
            "--set", "augment.time_window=1.0", "--out", tmp_path / "run", "--json")
    assert r.code == 0, r.err
    images = cli("pretrain", "--method", "simclr", "--set", "augment.time_window=1.0", "--set", "data.synthetic_train=64",
                 "--batch-size", "32", "--out", tmp_path / "images")
    assert images.code == 2 and "augment.time_window=1 takes the two views of a pair from frames of one clip" in images.err


def bad_clips(folder: Path) -> dict[str, Path]:
    """A 0-byte file, a truncated clip, a text file named .mp4 and a clip of 1 s."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = coded_clip(folder / "whole.tmp.mp4", 40, 8)
    files = {"empty": folder / "empty.mp4", "truncated": folder / "truncated.mp4", "text": folder / "notes.mp4",
             "short": folder / "short.mp4"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    files["text"].write_text("not a video\n")
    coded_clip(files["short"], 8, 8)
    whole.unlink()
    return files


@pytest.mark.slow
def test_damaged_and_short_clips_are_skipped_and_listed_while_the_run_goes_on(cli, tmp_path):
    data = tmp_path / "data"
    r = cli("write-clips", "synthetic:moving-shapes", "--out", data, "--synthetic-train", "40", "--synthetic-val", "10",
            "--image-size", "32")
    assert r.code == 0, r.err
    bad = bad_clips(data / "train" / "tee")
    r = cli("pretrain", "--recipe", "shuffle-and-learn", "--data", data, "--epochs", "1", "--batch-size", "16",
            "--set", "data.max_bad_fraction=0.1", "--set", "data.synthetic_train=auto", "--out", tmp_path / "run", "--json")
    assert r.code == 0, r.err
    listed = dict(line.split("\t") for line in (tmp_path / "run" / "skipped.txt").read_text().splitlines())
    assert set(listed) == {str(p) for p in bad.values()}
    assert "too short" in listed[str(bad["short"])] and "frames at data.fps=8" in listed[str(bad["short"])]
    assert r.json["skipped_images"] == 4
    for path in bad.values():
        assert f"'{path}'" in r.err


@pytest.mark.slow
def test_every_command_runs_on_a_folder_of_mp4_files(cli, tmp_path):
    data = tmp_path / "clips"
    r = cli("write-clips", "synthetic:moving-shapes", "--out", data, "--synthetic-train", "30", "--synthetic-val", "10",
            "--image-size", "32", "--json")
    assert r.code == 0 and r.json["files"] == {"train": 30, "val": 10}, r.err
    assert len(list(data.rglob("*.mp4"))) == 40 and probe_clip(next(data.rglob("*.mp4"))).has_audio
    run = tmp_path / "run"
    r = cli("pretrain", "--recipe", "shuffle-and-learn", "--data", data, "--epochs", "1", "--batch-size", "10",
            "--out", run, "--json")
    assert r.code == 0, r.err
    assert {"val_order_bacc", "val_shuffled_bacc", "order_bacc"} <= set(r.json["final"])
    k = cli("knn", run, "--k", "5", "--frames", "4", "--json")
    assert k.code == 0 and (k.json["n_train"], k.json["n_val"]) == (30, 10) and k.json["data"] == str(data), k.err
    p = cli("probe", run, "--layers", "all", "--epochs", "2", "--json")
    assert p.code == 0 and len(p.json["layers"]) == 5, p.err
    v = cli("visualize-neighbours", run, "--out", tmp_path / "n.png", "--queries", "3", "--k", "4", "--json")
    assert v.code == 0 and (tmp_path / "n.png").is_file(), v.err
    f = cli("finetune", run, "--epochs", "1", "--batch-size", "10", "--out", tmp_path / "ft", "--json")
    assert f.code == 0 and f.json["n_val"] == 10, f.err
    again = cli("write-clips", "synthetic:moving-shapes", "--out", data)
    assert again.code == 2 and "is not an empty folder" in again.err


def test_unreadable_clips_in_the_bad_input_helpers_really_are(tmp_path):
    files = bad_clips(tmp_path)
    for kind in ("empty", "truncated", "text"):
        with pytest.raises(Exception):
            probe_clip(files[kind])
    assert probe_clip(files["short"]).frames == 8
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
