"""The bad-input matrix: every case exits with its code and one `error:` line, shows no
traceback, and creates or changes nothing (the whole working folder is compared before/after)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY, pretrain_run, snapshot, write_bad_images, write_images


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch SimCLR run folder, copied by the cases that need one."""
    return pretrain_run(tmp_path_factory.mktemp("finished") / "run", "--method", "simclr", "--epochs", "1", *TINY)


def _labelled(root: Path, per_class: int = 12) -> Path:
    for cls, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        write_images(root / cls, per_class, colour=colour)
    return root


def _unreadable(root: Path) -> Path:
    root.mkdir()
    root.chmod(0o000)
    return root


def _broken_run(run: Path, part: str) -> Path:
    target = run / ("checkpoints/last.pt" if part == "checkpoint" else "backbone.safetensors")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    return run


def _unreadable_clips(root: Path) -> Path:
    root.mkdir()
    (root / "a.mp4").write_text("not a video\n")
    (root / "b.mp4").write_bytes(b"")
    return root


def _short_clips(root: Path) -> Path:
    import numpy as np

    from sslcli.data.media import write_clip

    for name in ("a.mp4", "b.mp4"):
        write_clip(root / name, np.zeros((8, 16, 16, 3), np.uint8), 8)  # 1 s: 8 frames at 8 fps, fewer than 16
    return root


def _mute_clips(root: Path) -> Path:
    import numpy as np

    from sslcli.data.media import write_clip

    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write_clip(root / name, np.zeros((24, 16, 16, 3), np.uint8), 8)  # 3 s, no audio stream
    return root


def _recipe_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class Workspace:
    """Makes the inputs a case names as {PLACEHOLDER}, inside the test's own folder."""

    def __init__(self, root: Path, finished_run: Path):
        self.root, self.finished_run = root, finished_run

    def run_copy(self) -> Path:
        target = self.root / "run"
        if not target.exists():
            shutil.copytree(self.finished_run, target)
        return target

    def make(self, name: str) -> str:
        r = self.root
        makers = {
            "OUT": lambda: r / "out",
            "MISSING": lambda: r / "no-such-folder",
            "EMPTY": lambda: (r / "empty").mkdir() or r / "empty",
            "NOIMAGES": lambda: _recipe_file((r / "docs" / "a").mkdir(parents=True) or r / "docs" / "a" / "readme.txt",
                                             "text").parent.parent,
            "FLAT": lambda: write_images(r / "flat", 6)[0].parent,
            "ALLBAD": lambda: write_bad_images(r / "allbad" / "x")["corrupt"].parent.parent,
            "SOMEBAD": lambda: (_labelled(r / "somebad"), write_bad_images(r / "somebad" / "red"))[0],
            "FILE": lambda: _recipe_file(r / "data.txt", "not a folder"),
            "UNREADABLE": lambda: _unreadable(r / "locked"),
            "RUN": self.run_copy,
            "TRUNCATED_CKPT": lambda: _broken_run(self.run_copy(), "checkpoint"),
            "TRUNCATED_WEIGHTS": lambda: _broken_run(self.run_copy(), "weights"),
            "TYPO_KEY": lambda: _recipe_file(r / "typo.yaml", "method: {name: simclr}\noptim: {lrr: 0.1}\n"),
            "TYPO_SECTION": lambda: _recipe_file(r / "section.yaml", "method: {name: simclr}\ntrian: {epochs: 1}\n"),
            "BAD_YAML": lambda: _recipe_file(r / "broken.yaml", "method: {name: simclr\noptim: [\n"),
            "NOT_WRITABLE": lambda: Path("/proc/sslcli-test/run"),
            "NOCLIPS": lambda: _unreadable_clips(r / "noclips"),
            "SHORTCLIPS": lambda: _short_clips(r / "shortclips"),
            "MUTECLIPS": lambda: _mute_clips(r / "muteclips"),
        }
        return str(makers[name]())

    def resolve(self, args: list[str]) -> list[str]:
        out = []
        for arg in args:
            while "{" in arg:
                start, end = arg.index("{"), arg.index("}")
                arg = arg[:start] + self.make(arg[start + 1:end]) + arg[end + 1:]
            out.append(arg)
        return out


P = ["pretrain", "--out", "{OUT}"]
SYNTH = ["--method", "simclr", *TINY]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

CASES = [
    # data
    ("missing data path", [*P, *SYNTH, "--data", "{MISSING}"], "does not exist"),
    ("empty folder", [*P, *SYNTH, "--data", "{EMPTY}"], "holds no images"),
    ("folder with no images", [*P, *SYNTH, "--data", "{NOIMAGES}"], "no images found"),
    ("data path is a file", [*P, *SYNTH, "--data", "{FILE}"], "is not a directory"),
    pytest.param("unreadable data folder", [*P, *SYNTH, "--data", "{UNREADABLE}"], "cannot be read",
                 marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")),
    ("no image decodes", [*P, *SYNTH, "--data", "{ALLBAD}"], "can be decoded"),
    ("too many undecodable images", [*P, *SYNTH, "--data", "{SOMEBAD}"], "more than data.max_bad_fraction=0.01"),
    ("unknown synthetic source", [*P, *SYNTH, "--data", "synthetic:blobs"], "unknown synthetic source"),
    # clips
    ("video method on an image folder", [*P, "--method", "shuffle-and-learn", "--data", "{FLAT}"],
     "holds images, not clips"),
    ("clip folder with no readable clip", [*P, *SYNTH, "--data", "{NOCLIPS}"], "clips of"),
    ("clips all shorter than an item", [*P, *SYNTH, "--data", "{SHORTCLIPS}"], "too short: 1.00 s gives 8 frames"),
    ("synthetic clips of fewer than 2 frames", ["write-clips", "synthetic:moving-shapes", "--out", "{OUT}", "--fps", "0.2"],
     "use fps 0.5 or more"),
    ("time-contrastive views of images", [*P, *SYNTH, "--set", "augment.time_window=1"], "set augment.time_window=0"),
    ("time-contrastive views for a one-view method", [*P, "--method", "rotation", "--data", "synthetic:moving-shapes",
                                                      "--set", "data.synthetic_train=40", "--set", "augment.time_window=1"],
     "'rotation' makes no pair of views"),
    # sound
    ("sound method on clips without sound", [*P, "--method", "audio-visual", "--data", "{MUTECLIPS}", "--batch-size", "2",
                                             "--set", "data.clip_frames=4"], "none of the 3 training clips"),
    ("sound method on an image folder", [*P, "--method", "audio-visual", "--data", "{FLAT}"], "holds images, not clips"),
    ("audio tower of a run without one", ["knn", "{RUN}", "--tower", "audio"], "only audio-visual runs have an audio tower"),
    ("unknown tower", ["knn", "random:resnet18", "--tower", "smell"], "--tower 'smell' is unknown"),
    ("audio tower of a vision weights file", ["probe", "{RUN}/backbone.safetensors", "--tower", "audio"],
     "is a vision backbone, with no audio front end"),
    ("hard negatives farther apart than an item", [*P, "--method", "audio-visual", "--set", "data.synthetic_train=40",
                                                   "--set", "data.synthetic_val=4", "--set", "method.hard_negative_share=0.5"],
     "raise data.clip_frames"),
    ("bad spectrogram settings", [*P, "--method", "audio-visual", "--set", "method.window=1024"], "method.window=1024"),
    ("kNN on an unlabelled folder of clips", ["knn", "random:resnet18", "--data", "{SHORTCLIPS}"],
     "knn needs labelled train and val splits"),
    ("knn on unlabelled data", ["knn", "random:resnet18", "--data", "{FLAT}"], "needs labelled"),
    ("probe on unlabelled data", ["probe", "random:resnet18", "--data", "{FLAT}"], "needs labelled"),
    ("finetune on unlabelled data", ["finetune", "random:resnet18", "--data", "{FLAT}", "--out", "{OUT}"],
     "trains with labels"),
    ("label fraction of unlabelled data", [*P, *SYNTH, "--data", "{FLAT}", "--batch-size", "2", "--set",
                                           "data.fraction=0.5"], "needs labels"),
    ("images smaller than jigsaw tiles", [*P, "--method", "jigsaw", *TINY, "--set", "data.image_size=16"],
     "tiles must be at least 8 px"),
    ("backbone that cannot take the images", [*P, *SYNTH, "--backbone", "vit_tiny_patch16_224"],
     "cannot train on 32-px images"),
    ("torchvision initialisation of a backbone without residual blocks",
     [*P, *SYNTH, "--backbone", "vit_tiny_patch16_224", "--set", "backbone.zero_init_last=false"],
     "applies to ResNet-style timm models"),
    # names and recipes
    ("unknown method", [*P, "--method", "simclrr"], "did you mean 'simclr'"),
    ("unknown backbone", [*P, *SYNTH, "--backbone", "resnt18"], "did you mean 'resnet18'"),
    ("unknown recipe key (--set)", [*P, *SYNTH, "--set", "optim.lrr=1"], "did you mean 'lr'"),
    ("unknown recipe key (file)", [*P, "--recipe", "{TYPO_KEY}"], "did you mean 'lr'"),
    ("unknown recipe section", [*P, "--recipe", "{TYPO_SECTION}"], "did you mean 'train'"),
    ("wrong type for a key", [*P, *SYNTH, "--set", "train.epochs=abc"], "must be an integer, got 'abc'"),
    ("zero batch size", [*P, *SYNTH, "--batch-size", "0"], "at least 1"),
    ("negative batch size", [*P, *SYNTH, "--batch-size", "-4"], "at least 1"),
    ("batch larger than the dataset", [*P, *SYNTH, "--batch-size", "500"], "larger than the 96 training images"),
    ("YAML syntax error", [*P, "--recipe", "{BAD_YAML}"], "at line 2, column 6"),
    ("recipe file missing", [*P, "--recipe", "nope.yaml"], "does not exist"),
    ("--set without =", [*P, *SYNTH, "--set", "train.epochs"], "has no '='"),
    ("nothing to train", [*P], "say what to train"),
    # the output folder
    ("--out not writable", ["pretrain", *SYNTH, "--out", "{NOT_WRITABLE}"], "is not writable"),
    ("--out is a file", ["pretrain", *SYNTH, "--out", "{FILE}"], "is a file"),
    ("--out non-empty without --resume/--force", ["pretrain", *SYNTH, "--out", "{RUN}"], "is not empty"),
    ("--resume and --force together", ["pretrain", *SYNTH, "--out", "{RUN}", "--resume", "--force"], "contradict"),
    # resuming
    ("--resume with no checkpoint", [*P, *SYNTH, "--resume"], "holds no run to continue"),
    ("--resume of a truncated checkpoint", ["pretrain", "--out", "{TRUNCATED_CKPT}", "--resume"], "cannot be read"),
    ("--resume with another method", ["pretrain", "--method", "rotation", "--out", "{RUN}", "--resume"],
     "trains 'simclr', not 'rotation'"),
    ("--resume with another method's recipe", ["pretrain", "--recipe", "rotation", "--out", "{RUN}", "--resume"],
     "checkpoint is from method 'simclr'"),
    ("--resume with another backbone", ["pretrain", "--out", "{RUN}", "--resume", "--backbone", "resnet34"],
     "with backbone 'resnet18'"),
    ("--resume with a changed learning rate", ["pretrain", "--out", "{RUN}", "--resume", "--set", "optim.lr=9"],
     "differs from the run's in optim.lr (run 0.6, now 9.0)"),
    # models
    ("MODEL path does not exist", ["knn", "{MISSING}"], "does not exist"),
    ("random: with an unknown name", ["knn", "random:resnt18"], "did you mean 'resnet18'"),
    ("random: with no name", ["knn", "random:"], "needs a timm model name"),
    ("damaged backbone.safetensors", ["knn", "{TRUNCATED_WEIGHTS}"], "damaged"),
    ("kNN k not a number", ["knn", "random:resnet18", "--k", "many"], "must be a number"),
    ("unknown probe layer", ["probe", "random:resnet18", "--layers", "layer9"], "unknown layer 'layer9'"),
    ("neighbours picture not a PNG", ["visualize-neighbours", "random:resnet18", "--out", "{OUT}.jpg"], "must end in .png"),
    pytest.param("synchronised BatchNorm without CUDA", [*P, *SYNTH, "--set", "train.sync_batchnorm=true"],
                 "train.sync_batchnorm needs CUDA GPUs", marks=no_cuda),
    pytest.param("--device cuda without CUDA", [*P, *SYNTH, "--device", "cuda"], "no usable CUDA", marks=no_cuda),
]


@pytest.mark.parametrize("case, args, message", CASES,
                         ids=[c[0] if isinstance(c, tuple) and isinstance(c[0], str) else c.values[0] for c in CASES])
def test_bad_input(cli, tmp_path, monkeypatch, finished_run, case, args, message):
    work = Workspace(tmp_path, finished_run)
    args = work.resolve(args)
    monkeypatch.chdir(tmp_path)  # a default run folder would land here and be noticed
    before = snapshot(tmp_path)
    r = cli(*args)
    assert r.code == 2, (r.code, r.err)
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    assert message in lines[0], lines[0]
    assert snapshot(tmp_path) == before, "a refused command created or changed files"


def test_too_little_disk_space_is_refused_before_writing(cli, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5_000_000, 5_000_000))
    r = cli("pretrain", *SYNTH, "--out", tmp_path / "out")
    assert r.code == 2 and "5 MB free, but this run needs about" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_kept_checkpoints_count_in_the_space_a_run_plans_for(cli, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    free = 600_000_000  # room for a checkpoint and the previous one (about 2 x 135 MB), not for ten kept besides
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**10, 10**10 - free, free))
    keep = [*SYNTH, "--epochs", "10", "--set", "train.keep_every=1"]
    r = cli("pretrain", *keep, "--out", tmp_path / "out")
    assert r.code == 2 and "10 kept epoch-N.pt" in r.err and "set train.keep_last" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    r = cli("pretrain", *keep, "--set", "train.keep_last=1", "--out", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("epoch-*.pt")) == ["epoch-10.pt"]


def test_debug_shows_the_traceback(cli, tmp_path):
    with pytest.raises(Exception, match="did you mean 'simclr'"):
        cli("--debug", "pretrain", "--method", "simclrr", "--out", tmp_path / "out")


def test_unreadable_data_folder(cli, tmp_path, monkeypatch):
    """Permission denied while listing the data (simulated: root reads any folder)."""
    locked = tmp_path / "locked"
    write_images(locked / "a", 4)
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    r = cli("pretrain", *SYNTH, "--data", locked, "--out", tmp_path / "out")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert f"data folder '{locked}' cannot be read (permission denied)" in r.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fault", ["__init__", "setup", "make_views", "training_step"])
def test_a_plugin_that_raises_is_refused_in_one_line_naming_it(cli, tmp_path, monkeypatch, fault):
    """Whatever a plugin raises before training starts reaches the user as one line, not a traceback."""
    from sslcli import registry
    from sslcli.methods.rotation import Rotation

    def broken(*args, **kwargs):
        raise KeyError("no such thing")

    class Broken(Rotation):
        name = "broken"

    setattr(Broken, fault, lambda self, *a, **k: broken())
    monkeypatch.setitem(registry._METHODS, "broken", Broken)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    r = cli("pretrain", "--method", "broken", *TINY, "--out", tmp_path / "out")
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err
    assert lines[0].startswith("error: method 'broken' failed in") and "KeyError: 'no such thing'" in lines[0]
    assert snapshot(tmp_path) == before


def test_video_without_pyav_is_refused_naming_the_extra(cli, tmp_path, monkeypatch):
    import sys

    folder = _short_clips(tmp_path / "clips")
    monkeypatch.setitem(sys.modules, "av", None)  # as if the video extra were not installed
    monkeypatch.setenv("SSLCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    for args in (["pretrain", "--method", "shuffle-and-learn", "--data", folder, "--out", tmp_path / "out"],
                 ["knn", "random:resnet18", "--data", folder],
                 ["write-clips", "synthetic:moving-shapes", "--out", tmp_path / "written"]):
        r = cli(*args)
        lines = r.err.strip().splitlines()
        assert r.code == 2 and len(lines) == 1 and "Traceback" not in r.err, r.err
        assert "pip install 'sslcli[video]'" in lines[0], lines[0]
    assert snapshot(tmp_path) == before
