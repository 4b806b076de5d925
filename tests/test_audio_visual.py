"""Sound: clip audio aligned with frames, audio-visual pairs, both towers saved and evaluated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from sslcli.backbones import load_model  # noqa: E402
from sslcli.data.clips import SoundPlan, sound_windows  # noqa: E402
from sslcli.data.images import Batch
from sslcli.data.media import read_audio, write_clip  # noqa: E402
from sslcli.data.sources import ClipSettings, open_source  # noqa: E402
from sslcli.methods.audio_visual import make_pairs  # noqa: E402
from sslcli.methods.base import MethodContext


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCLI_CACHE", str(tmp_path / "cache"))


def click_track(seconds: float, at: float, rate: int) -> np.ndarray:
    wave = np.zeros(int(seconds * rate), np.float32)
    wave[int(at * rate):int(at * rate) + max(1, rate // 500)] = 0.9  # 2 ms
    return wave


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".mkv"])
@pytest.mark.parametrize("written, read", [(16000, 16000), (44100, 16000), (16000, 48000)])
def test_a_click_is_heard_at_its_time_whatever_the_container_and_rate(tmp_path, ext, written, read):
    path = tmp_path / f"click{ext}"
    write_clip(path, np.zeros((32, 32, 32, 3), np.uint8), 8, audio=click_track(4.0, 1.5, written), sample_rate=written)
    wave = read_audio(path, read)
    # AAC puts 1024 samples of padding before the sound; MP4 and MKV say so, AVI cannot (we cut them)
    assert abs(np.argmax(np.abs(wave)) / read - 1.5) < 0.004
    assert abs(len(wave) / read - 4.0) < 0.08


def test_sound_windows_are_centred_on_their_frames_and_stay_inside_the_clip():
    rate, fps = 1000, 8
    wave = np.arange(4000, dtype=np.float32)  # each sample says its own position
    plan = SoundPlan(rate, 1.0)
    windows = sound_windows(wave, [0, 12, 31], fps, plan)
    assert windows.shape == (3, 1000)
    assert windows[0, 0] == 0  # frame 0: moved to start at the clip's start, not padded with silence
    assert windows[1, 500] == pytest.approx(1562, abs=1)  # frame 12 shows 1.5-1.625 s: its middle is 1.5625 s
    assert windows[2, -1] == 3999  # the last frame's window ends with the clip
    short = sound_windows(np.ones(300, np.float32), [0], fps, plan)
    assert short[0, :300].eq(1).all() and short[0, 300:].eq(0).all()


def test_a_click_lands_in_the_windows_of_the_frames_around_it(tmp_path):
    path = tmp_path / "clips" / "a.mp4"
    write_clip(path, np.zeros((32, 32, 32, 3), np.uint8), 8, audio=click_track(4.0, 2.0, 16000), sample_rate=16000)
    write_clip(tmp_path / "clips" / "b.mp4", np.zeros((32, 32, 32, 3), np.uint8), 8, audio=click_track(4.0, 1.0, 16000))
    for cache in (4.0, 0.0):  # in memory, and decoded on demand
        ds = open_source(str(tmp_path / "clips"), 32, cache_max_gb=cache, clips=ClipSettings(8, 4))
        split = ds.train.for_eval(32).with_sound(SoundPlan(16000, 0.5))
        index = [i for i in range(len(split)) if split.path(i).name == "a.mp4"][0]
        item, _, _, reason = split.read(index)
        assert reason == "" and item[1].shape == (32, 8000)
        heard = item[1].abs().amax(1) > 0.3
        # frame t is on screen from t/8 s; its half-second window is centred on (t + 0.5)/8 s
        expected = torch.tensor([abs((t + 0.5) / 8 - 2.0) < 0.25 for t in range(32)])
        assert torch.equal(heard, expected), heard.nonzero().flatten().tolist()


def test_pairs_are_labelled_by_whether_the_sound_is_the_frames_own():
    gen = torch.Generator().manual_seed(0)
    shown, clip, frame, match = make_pairs(4000, 16, 0.5, 0.4, 6, gen)
    rows = torch.arange(4000)
    own = (clip == rows) & (frame == shown)
    assert torch.equal(match.bool(), own)
    negatives = ~match.bool()
    assert abs(negatives.float().mean() - 0.5) < 0.03
    hard = negatives & (clip == rows)
    assert abs(hard.sum() / negatives.sum() - 0.4) < 0.04
    assert ((frame[hard] - shown[hard]).abs() >= 6).all()  # far in time
    assert (clip[negatives & ~hard] != rows[negatives & ~hard]).all()
    assert torch.equal(make_pairs(10, 4, 0.0, 0.0, 1, torch.Generator().manual_seed(1))[3], torch.ones(10))


def test_the_synthetic_soundtrack_sounds_the_class_pitch_over_a_hum_of_its_own():
    from sslcli.data import moving_shapes as ms

    _, labels, audio = ms.generate_clips(20, 0, "train", 32)
    rate = ms.SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(audio, axis=1))
    freqs = np.fft.rfftfreq(audio.shape[1], 1 / rate)
    for wave_spectrum, label in zip(spectrum, labels):
        pitch = ms.PITCHES[label]
        near = (freqs > pitch * 0.97) & (freqs < pitch * 1.03)
        assert wave_spectrum[near].max() > 0.2 * wave_spectrum.max()  # the class is always audible


@pytest.fixture(scope="module")
def av_run(tmp_path_factory):
    """A short audio-visual run on a folder of .mp4 files: most with sound, one silent, one mute."""
    from conftest import main_json

    root = tmp_path_factory.mktemp("av")
    data = root / "clips"
    written = main_json("write-clips", "synthetic:moving-shapes", "--out", str(data), "--synthetic-train", "24",
                        "--synthetic-val", "8", "--image-size", "32", "--json")
    assert written["files"] == {"train": 24, "val": 8}
    frames = (np.random.default_rng(0).random((24, 32, 32, 3)) * 255).astype(np.uint8)
    write_clip(data / "train" / "circle" / "mute.mp4", frames, 8)  # no audio stream
    write_clip(data / "train" / "circle" / "silent.mp4", frames, 8, audio=np.zeros(48000, np.float32))
    out = root / "run"
    result = main_json("pretrain", "--method", "audio-visual", "--data", str(data), "--epochs", "1",
                       "--batch-size", "8", "--set", "data.image_size=32", "--set", "data.synthetic_train=auto",
                       "--set", "data.synthetic_val=auto", "--set", "method.val_pairs=8", "--set", "data.clip_frames=4",
                       "--set", "method.hop=320", "--set", "method.n_mels=32", "--set", "data.max_bad_fraction=0.1",
                       "--out", str(out), "--json")
    return data, out, result


@pytest.mark.slow
def test_a_mute_clip_is_skipped_and_listed_and_a_silent_one_trains(av_run):
    data, run, result = av_run
    listed = dict(line.split("\t") for line in (run / "skipped.txt").read_text().splitlines())
    assert set(listed) == {str(data / "train" / "circle" / "mute.mp4")}
    assert "no audio stream" in next(iter(listed.values()))
    final = result["final"]
    assert np.isfinite(final["loss"]) and {"match_bacc", "own_acc", "other_clip_acc", "val_match_bacc", "val_noise_bacc"} <= set(final)


@pytest.mark.slow
def test_both_towers_are_saved_and_reload_exactly(av_run):
    import timm
    from safetensors.torch import load_file

    _, run, _ = av_run
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    for tower, prefix in (("vision", "backbone."), ("audio", "audio_backbone.")):
        model, info = load_model(str(run), tower=tower)
        saved = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        assert saved and all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
    model, info = load_model(str(run), tower="audio")
    assert info.in_chans == 1 and info.front_end["n_mels"] == 32 and info.front_end["hop"] == 320
    plain = timm.create_model("resnet18", num_classes=1000, in_chans=1)
    plain.load_state_dict(load_file(str(run / "audio_backbone.safetensors")))  # timm loads it strictly, as is


def test_the_audio_tower_exports_with_its_spectrogram_settings(cli, av_run, tmp_path):
    import json

    import sslcli

    _, run, _ = av_run
    r = cli("export", run, "--tower", "audio", "--format", "pt2", "--out", tmp_path / "ears.pt2", "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    front = result["backbone"]["front_end"]
    assert result["tower"] == "audio" and front["n_mels"] == 32 and result["input"][:2] == [1, 32]
    x = torch.randn(3, *result["input"])
    with torch.no_grad():
        expected = sslcli.load_backbone(run, tower="audio")(x)
        got = torch.export.load(str(tmp_path / "ears.pt2")).module()(x)
    assert (got - expected).abs().max() < 1e-4


@pytest.mark.slow
def test_knn_probe_and_neighbours_judge_either_tower(cli, av_run, tmp_path):
    data, run, _ = av_run
    for tower, heard in (("audio", 25), ("vision", 26)):  # the audio tower skips the mute clip, and only it
        k = cli("knn", run, "--tower", tower, "--k", "5", "--frames", "4", "--json")
        assert k.code == 0 and k.json["tower"] == tower and k.json["n_train"] == heard, k.err
    p = cli("probe", run, "--tower", "audio", "--layers", "all", "--epochs", "2", "--frames", "2", "--json")
    assert p.code == 0 and len(p.json["layers"]) == 5, p.err
    v = cli("visualize-neighbours", run, "--tower", "audio", "--out", tmp_path / "n.png", "--queries", "2", "--k", "3",
            "--frames", "2", "--json")
    assert v.code == 0 and (tmp_path / "n.png").is_file(), v.err
    r = cli("knn", "random:resnet18", "--data", data, "--tower", "audio", "--k", "5", "--frames", "2", "--json")
    assert r.code == 0 and r.json["feature_dim"] == 512, r.err


def _coloured_clips(n: int, gen: torch.Generator, rate: int = 16000, seconds: float = 0.5):
    """Clips whose colour and pitch both say their class (one of ten), with noise: what a frame
    shows and what the sound says agree only for the clip's own sound."""
    labels = torch.randint(10, (n,), generator=gen)
    hue = torch.rand(10, 3, generator=torch.Generator().manual_seed(5))
    frames = (hue[labels][:, None, :, None, None] * 200 + torch.rand(n, 4, 3, 32, 32, generator=gen) * 55).to(torch.uint8)
    t = torch.arange(int(rate * seconds)) / rate
    pitch = 220 * 2 ** (labels / 5.0)
    audio = 0.3 * torch.sin(2 * torch.pi * pitch[:, None, None] * t + torch.rand(n, 4, 1, generator=gen) * 6)
    return frames, audio + 0.05 * torch.randn(audio.shape, generator=gen)


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["concat", "distance"])
def test_audio_visual_learns_which_sound_goes_with_a_frame(fusion):
    from sslcli.backbones import create_backbone
    from sslcli.data.augment import eval_view
    from sslcli.recipe import resolve_recipe
    from sslcli.registry import get_method

    raw = {"method": {"name": "audio-visual", "fusion": fusion, "hop": 320, "n_mels": 32, "seconds": 0.5,
                      "audio_backbone": "test_resnet"},
           "backbone": {"name": "test_resnet"}, "data": {"source": "synthetic:moving-shapes", "clip_frames": 4}}
    recipe = resolve_recipe(raw, lambda name: get_method(name).Config)
    torch.manual_seed(0)
    backbone, info = create_backbone("test_resnet", False, 32)
    method = get_method("audio-visual")(MethodContext(recipe, backbone, info.feature_dim, 32))
    optimizer = torch.optim.AdamW(method.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(120):
        frames, audio = _coloured_clips(48, gen)
        loss, metrics = method.training_step(method.make_views(Batch.of(frames, audio=audio), gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()
    frames, audio = _coloured_clips(200, torch.Generator().manual_seed(99))
    with torch.no_grad():  # the paper's val pairs: half a frame's own sound, half another clip's
        other = torch.roll(torch.arange(200), 1)
        heard = torch.where(torch.arange(200) % 2 == 0, torch.arange(200), other)
        logits = method.logits(eval_view(frames[:, 0]), method.front_end(audio[heard, 0]))
    match = (torch.arange(200) % 2 == 0).float()
    same_class_negatives = 0.1  # another clip of the same class sounds alike: the ceiling is 1 - 0.1 / 2
    accuracy = float(((logits > 0).float() == match).float().mean())
    assert accuracy > 0.8 * (1 - same_class_negatives / 2), accuracy


@pytest.mark.slow
def test_sound_finds_frames_in_a_distance_fusion_run_and_a_concat_run_is_refused(cli, av_run, tmp_path):
    data, concat_run, _ = av_run
    run = tmp_path / "distance"
    r = cli("pretrain", "--method", "audio-visual", "--data", data, "--epochs", "1", "--batch-size", "8",
            "--set", "data.image_size=32", "--set", "data.clip_frames=4", "--set", "method.fusion=distance",
            "--set", "method.hop=320", "--set", "method.n_mels=32", "--set", "method.val_pairs=8",
            "--set", "data.max_bad_fraction=0.1", "--out", run, "--json")
    assert r.code == 0, r.err
    v = cli("visualize-neighbours", run, "--query-tower", "audio", "--out", tmp_path / "x.png", "--queries", "3",
            "--k", "4", "--frames", "2", "--json")
    assert v.code == 0 and v.json["query_tower"] == "audio" and v.json["tower"] == "vision", v.err
    assert (tmp_path / "x.png").is_file()
    refused = cli("visualize-neighbours", concat_run, "--query-tower", "audio", "--out", tmp_path / "y.png")
    assert refused.code == 2 and "method.fusion=distance" in refused.err and not (tmp_path / "y.png").exists()
    assert len(refused.err.strip().splitlines()) == 1, refused.err
