"""No run is ever lost: bad images are skipped and listed, a diverging run keeps its last good
checkpoint, a full disk fails cleanly, and kill -9 at any moment resumes to identical weights."""

from __future__ import annotations

import errno
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, pretrain_run, write_bad_images, write_images
from test_engine import epoch_records, same_weights

RUN = ["pretrain", "--method", "simclr", *TINY]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted three-epoch run: the reference every interrupted run must match."""
    return pretrain_run(tmp_path_factory.mktemp("straight") / "run", *RUN[1:], "--epochs", "3")


def _folder_with_bad_images(root: Path) -> dict:
    for cls, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        write_images(root / cls, 120, colour=colour)
    return write_bad_images(root / "red")  # 3 bad of 243: 1.2%


@pytest.mark.parametrize("cached", [True, False], ids=["decoded-up-front", "streamed"])
def test_undecodable_images_are_skipped_and_listed(cli, tmp_path, cached):
    bad = _folder_with_bad_images(tmp_path / "data")
    extra = [] if cached else ["--set", "data.cache_max_gb=0", "--set", "data.workers=1"]
    r = cli("pretrain", "--method", "rotation", "--data", tmp_path / "data", "--out", tmp_path / "run", "--epochs", "1",
            "--batch-size", "32", "--set", "data.max_bad_fraction=0.02", *extra, "--json")
    assert r.code == 0, r.err
    listed = dict(line.split("\t") for line in (tmp_path / "run" / "skipped.txt").read_text().splitlines())
    assert len(listed) == r.json["skipped_images"]
    # decoded up front, all three are found; streamed, those drawn into an epoch's batches are
    val_or_unvisited = 0 if cached else 3
    assert 3 - val_or_unvisited <= len(listed) <= 3 and set(listed) <= {str(p) for p in bad.values()}
    assert all(reason.strip() for reason in listed.values())
    for path in listed:
        assert f"skipped unreadable image '{path}'" in r.err
    if cached:
        assert "Truncated" in listed[str(bad["truncated"])] and "cannot identify" in listed[str(bad["not_an_image"])]
        k = cli("knn", tmp_path / "run", "--json")  # evaluation skips them as well
        assert k.code == 0 and "skipped unreadable image" in k.err


def test_too_many_bad_images_found_while_streaming_stop_the_run(cli, tmp_path):
    root = tmp_path / "data"
    write_images(root, 40)
    for i in range(4):  # 4 of 44, all among the training images of a flat folder
        write_bad_images(root / f"bad{i}")["corrupt"].rename(root / f"zz-bad{i}.jpg")
        shutil.rmtree(root / f"bad{i}")
    r = cli("pretrain", "--method", "rotation", "--data", root, "--out", tmp_path / "run", "--epochs", "1",
            "--batch-size", "8", "--set", "data.cache_max_gb=0", "--set", "data.workers=0",
            "--set", "data.max_bad_fraction=0.05")
    assert r.code == 2, r.err
    assert "cannot be decoded, more than data.max_bad_fraction=0.05" in r.err.strip().splitlines()[-1]
    assert len((tmp_path / "run" / "skipped.txt").read_text().splitlines()) == 3


def test_diverging_run_stops_and_keeps_a_loadable_checkpoint(cli, tmp_path):
    # lr 3e4 survives epoch 1 (its checkpoint is finite) and overflows to NaN in epoch 2
    r = cli("pretrain", "--method", "rotation", *TINY, "--epochs", "3", "--set", "optim.lr=3e4",
            "--set", "optim.warmup_epochs=0", "--out", tmp_path / "run")
    assert r.code == 1, r.err
    last = r.err.strip().splitlines()[-1]
    assert last.startswith(("error: loss became nan at epoch 2", "error: the weights became non-finite by epoch 2"))
    assert "Traceback" not in r.err
    assert "the last good checkpoint (epoch 1) is kept" in last and "lower optim.lr" in last
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    k = cli("knn", tmp_path / "run", "--json")  # the kept backbone is usable
    assert k.code == 0, k.err


class _FullDisk:
    """`open` for sslcli.files that fails the `nth` write of checkpoints/last.pt half way, as a
    full disk does."""

    def __init__(self, nth: int):
        self.nth, self.count = nth, 0

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if Path(path).name == "last.pt.tmp":
            self.count += 1
            if self.count == self.nth:
                return _HalfWriter(f)
        return f


class _HalfWriter:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.slow
def test_full_disk_fails_cleanly_then_resumes_exactly(cli, tmp_path, monkeypatch, straight):
    import sslcli.files

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(sslcli.files, "open", _FullDisk(nth=2), raising=False)
        r = cli(*RUN, "--epochs", "3", "--out", run)
    assert r.code == 1, r.err
    last = r.err.strip().splitlines()[-1]
    assert "No space left on device" in last and "the last good checkpoint (epoch 1) is kept" in last
    assert "--resume" in last and "Traceback" not in r.err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]  # no half-written file left
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    r = cli(*RUN, "--epochs", "3", "--out", run, "--resume")
    assert r.code == 0, r.err
    assert same_weights(straight, run)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 400 MB filesystem to fill (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_really_full_disk_keeps_the_last_checkpoint(cli, small_tmpfs, monkeypatch, straight):
    from sslcli.methods.simclr import SimCLR

    filler = small_tmpfs / "filler"

    def fill_disk_at_step_4(self, progress):  # 3 steps an epoch: mid epoch 2
        if round(progress * 9) == 4:
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 1_000_000)
                except OSError:
                    pass

    run = small_tmpfs / "run"
    with monkeypatch.context() as m:
        m.setattr(SimCLR, "on_step_end", fill_disk_at_step_4)
        r = cli(*RUN, "--epochs", "3", "--out", run)
    assert r.code == 1, r.err
    assert "No space left on device" in r.err.strip().splitlines()[-1]
    assert not list(run.rglob("*.tmp"))
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    filler.unlink()
    r = cli(*RUN, "--epochs", "3", "--out", run, "--resume")
    assert r.code == 0, r.err
    assert same_weights(straight, run)


class _Killed(BaseException):
    """Stands for a kill -9: nothing after it runs, not even the engine's cleanup."""


@pytest.mark.slow
def test_kill_between_checkpoint_and_backbone_then_resume_is_exact(cli, tmp_path, monkeypatch, straight):
    """A kill after the final last.pt is written but before backbone.safetensors is: --resume has
    no step left to train, and must still leave the backbone of the checkpoint it resumed."""
    import sslcli.engine.checkpoints

    written = sslcli.engine.checkpoints.save_backbone

    def killed_before_the_last_backbone(model, info, folder, stem="backbone"):
        if info.epoch == 3:
            raise _Killed
        return written(model, info, folder, stem)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(sslcli.engine.checkpoints, "save_backbone", killed_before_the_last_backbone)
        with pytest.raises(_Killed):
            cli(*RUN, "--epochs", "3", "--out", run)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3
    assert json.loads((run / "backbone.json").read_text())["epoch"] == 2
    r = cli(*RUN, "--epochs", "3", "--out", run, "--resume")
    assert r.code == 0, r.err
    assert same_weights(straight, run)
    assert json.loads((run / "backbone.json").read_text())["epoch"] == 3


def _checkpoint_position(run: Path):
    """(epoch, global step) of the run's last.pt, or None before the first checkpoint."""
    last = run / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    ckpt = torch.load(last, weights_only=True, map_location="cpu")
    return ckpt["epoch"], ckpt["global_step"]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_exact(tmp_path):
    """Three kill -9s at random moments of one run (checkpoint writes included), each followed by
    --resume; every resume starts from the checkpoint the kill left (or from the beginning when
    there was none), and the weights end identical to an uninterrupted run's. The killed process's
    lock on the folder goes with it: each resume is let in."""
    cmd = [sys.executable, "-m", "sslcli", *RUN, "--epochs", "6", "--set", "train.log_every=1"]
    straight = json.loads(subprocess.run(cmd + ["--out", str(tmp_path / "straight"), "--json"], check=True,
                                         capture_output=True, text=True).stdout)
    training = straight["seconds"]
    seed = int(time.time())
    rng = random.Random(seed)
    run, kills, resume, resumed_from = tmp_path / "killed", [], [], []
    while True:
        recipe = run / "recipe.yaml"
        before = recipe.stat().st_mtime_ns if recipe.exists() else None
        position = _checkpoint_position(run) if resume else None
        proc = subprocess.Popen(cmd + ["--out", str(run), *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if len(kills) < 3:
            deadline = time.time() + 120  # each (re)start rewrites recipe.yaml as training begins
            while (recipe.stat().st_mtime_ns if recipe.exists() else None) == before and proc.poll() is None \
                    and time.time() < deadline:
                time.sleep(0.005)
            while len(kills) == 2 and _checkpoint_position(run) is None and proc.poll() is None \
                    and time.time() < deadline:  # the last kill comes after a checkpoint, so one resume uses it
                time.sleep(0.005)
            delay = rng.uniform(0, training / 2)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            kills.append(round(delay, 3))
        _, err = proc.communicate()
        err = err.decode()
        if resume:
            expected = ("starting from the beginning" if position is None
                        else f"resuming from epoch {position[0]}, step {position[1]}")
            assert expected in err, (seed, kills, position, err[-2000:])
            resumed_from.append(position)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, (seed, kills, err[-2000:])
        resume = ["--resume"]
    assert same_weights(tmp_path / "straight", run), f"seed {seed}, kills at {kills}"
    assert [r["epoch"] for r in epoch_records(run)] == list(range(1, 7)), f"seed {seed}, kills at {kills}"
    assert len(resumed_from) == 3 and any(p is not None for p in resumed_from), (seed, kills, resumed_from)


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_finishes_as_if_alone(cli, tmp_path):
    """Two pretrains on one folder (a double-submitted job): the second is refused in one line naming
    the first, touches nothing, and the first ends with the weights of a run that was alone."""
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "sslcli", *RUN, "--epochs", "8", "--out", str(run)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock, deadline = run / ".sslcli.lock", time.time() + 120
    while not (lock.exists() and lock.read_text().startswith("process")) and first.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    second = cli(*RUN, "--epochs", "8", "--out", run, "--force")
    still_running = first.poll() is None
    _, err = first.communicate()
    assert first.returncode == 0, err.decode()[-2000:]
    assert still_running, "the first run ended before the second tried: the test proves nothing"
    assert second.code == 2 and f"is being written by process {first.pid} on " in second.err, second.err
    assert len(second.err.strip().splitlines()) == 1, second.err
    alone = pretrain_run(tmp_path / "alone", *RUN[1:], "--epochs", "8")
    assert same_weights(alone, run)
    again = cli(*RUN, "--epochs", "9", "--out", run, "--resume")  # the lock went with the first process
    assert again.code == 0, again.err


def _flip_a_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_and_the_offered_older_one_resumes_exactly(cli, tmp_path, straight):
    run = tmp_path / "run"
    r = cli(*RUN, "--epochs", "3", "--set", "train.keep_every=2", "--out", run)  # keeps epoch-2.pt
    assert r.code == 0, r.err
    last = run / "checkpoints" / "last.pt"
    _flip_a_byte(last)  # the middle of the file: the bytes of a weight
    refused = cli(*RUN, "--epochs", "3", "--out", run, "--resume")
    older = run / "checkpoints" / "epoch-2.pt"
    assert refused.code == 2 and f"--resume-from {older}" in refused.err, refused.err
    assert len(refused.err.strip().splitlines()) == 1 and "do not match the digest" in refused.err, refused.err
    r = cli(*RUN, "--epochs", "3", "--out", run, "--resume-from", older)
    assert r.code == 0 and "resuming from epoch 2" in r.err, r.err
    assert same_weights(straight, run)
    assert torch.load(last, weights_only=True)["epoch"] == 3  # a whole last.pt again


def test_damaged_weights_are_refused_against_the_digest_in_their_json(cli, tmp_path, straight):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    assert json.loads((run / "backbone.json").read_text())["sha256"]
    _flip_a_byte(run / "backbone.safetensors", 0.7)
    r = cli("knn", run, "--json")
    assert r.code == 2 and "do not match the sha256 in 'backbone.json'" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1


def test_resume_before_the_first_checkpoint_starts_over(cli, tmp_path, straight):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(straight / "recipe.yaml", run / "recipe.yaml")  # killed before its first checkpoint
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "lo')
    r = cli("pretrain", "--out", run, "--resume")
    assert r.code == 0, r.err
    assert "starting from the beginning" in r.err
    assert same_weights(straight, run)
    assert [r["epoch"] for r in epoch_records(run)] == [1, 2, 3]


def test_resume_may_extend_the_run(cli, tmp_path, straight):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    r = cli("pretrain", "--out", run, "--resume", "--epochs", "4", "--json")
    assert r.code == 0, r.err
    assert [r["epoch"] for r in epoch_records(run)] == [1, 2, 3, 4]
