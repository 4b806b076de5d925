"""Training on several processes equals one process at the global batch: the loss and every
gradient of a step on 2 gloo ranks x batch B against 1 process x batch 2B on the same samples
and views; queues and banks identical on every rank; and `torchrun` runs of the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_joint_methods import build

from sslcli.data.images import Batch

pytestmark = pytest.mark.slow

EXACT = ["simclr", "moco", "swav", "barlow-twins", "vicreg", "byol", "rotation", "jigsaw", "relative-position", "multitask",
         "audio-visual", "shuffle-and-learn", "pirl", "colorization", "inpainting"]
SMALL = {"simclr": {}, "moco": {"queue_size": 64}, "swav": {"prototypes": 16, "small_crops": 2, "queue_size": 0},
         "barlow-twins": {"proj_hidden_dim": 64, "proj_dim": 64}, "vicreg": {"proj_hidden_dim": 64, "proj_dim": 64},
         "byol": {"proj_hidden_dim": 64}, "rotation": {}, "jigsaw": {"num_permutations": 10}, "pirl": {"negatives": 16},
         "relative-position": {}, "multitask": {"mode": "mix", "tasks": [{"name": "rotation"}, {"name": "relative-position"}]},
         "audio-visual": {"hop": 320, "n_mels": 32, "seconds": 0.25, "audio_backbone": "test_resnet",
                          "hard_negative_share": 0.5, "hard_negative_gap": 0.2},
         "shuffle-and-learn": {"window": 5, "head_hidden_dim": 64}, "colorization": {}, "inpainting": {}}
BATCH = 8  # the global batch


def _freeze_norms(method: torch.nn.Module) -> torch.nn.Module:
    """Norm layers use their running statistics: SyncBatchNorm needs CUDA, and per-rank batch
    statistics are not the global batch's."""
    for m in method.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return method


def _method(name: str):
    method = _freeze_norms(build(name, **SMALL[name]))
    if name == "pirl":
        method.setup(range(BATCH))  # its bank: one entry per training image
    return method


def _views(name: str, method, step: int = 0):
    gen = torch.Generator().manual_seed(100 + step)
    if method.data_kind == "video":  # clips of 6 frames, with the sound around each frame
        clips = torch.randint(0, 256, (BATCH, 6, 3, 32, 32), generator=gen, dtype=torch.uint8)
        clips[:3] = clips[:3, :1]  # three still clips: rank 0's share gives fewer tuples than rank 1's
        plan = type(method).sound_plan(method.recipe)
        audio = torch.randn(BATCH, 6, plan.samples, generator=gen) if plan else None
        return method.batch_views(Batch.of(clips, audio=audio), gen)
    images = torch.randint(0, 256, (BATCH, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return method.batch_views(Batch.of(images, indices=torch.arange(BATCH) + step * BATCH), gen)


def _step(name: str, method):
    """Loss and gradients of one step as the engine takes it (shard, step, backward, average)."""
    from sslcli.engine import ranks

    torch.manual_seed(7)  # methods that draw inside their step draw the same on every rank
    views = method.shard_views(_views(name, method), BATCH)
    loss, metrics = method.training_step(views)
    method.zero_grad(set_to_none=True)
    loss.backward()
    ranks.average_gradients(method)
    loss, _ = ranks.agree(float(loss.detach()), {k: float(v) for k, v in metrics.items()})
    return loss, {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


STATE = {"moco": SMALL["moco"], "pirl": SMALL["pirl"],  # swav: its queue joins Sinkhorn once full, at step 3
         "swav": {**SMALL["swav"], "queue_size": 16, "queue_start_epoch": 0}}


def _state_after_steps(name: str, steps: int) -> dict:
    """The queue or bank after `steps` steps (with optimiser-free momentum updates), and the
    losses of the steps averaged over the ranks."""
    from sslcli.engine import ranks

    torch.manual_seed(0)
    method = _freeze_norms(build(name, **STATE[name]))
    method.setup(range(BATCH * steps))  # PIRL's bank: one entry per training image
    losses = []
    for step in range(steps):
        torch.manual_seed(7 + step)
        views = method.shard_views(_views(name, method, step), BATCH)
        loss = method.training_step(views)[0]
        loss.backward()
        losses.append(ranks.agree(float(loss.detach()), {})[0])
        method.on_step_end(step / steps)
    state = {k: v.clone() for k, v in method.named_buffers() if k in ("queue", "queue_pointer", "queue_filled", "bank")}
    return {**state, "losses": torch.tensor(losses, dtype=torch.float64)}


def _rank(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    results = {}
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        for name in EXACT:
            torch.manual_seed(0)
            results[name] = _step(name, _method(name))
        for name in STATE:
            results[f"{name}-state"] = _state_after_steps(name, 3)
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank, args=(2, str(folder / "init"), str(folder)), nprocs=2)
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", EXACT)
def test_a_step_on_two_ranks_equals_one_process_at_twice_the_batch(two_ranks, name):
    torch.manual_seed(0)
    one_loss, one_grads = _step(name, _method(name))
    for loss, grads in (r[name] for r in two_ranks):
        assert abs(loss - one_loss) <= 1e-5 * max(1.0, abs(one_loss)), (loss, one_loss)
        assert grads.keys() == one_grads.keys() and grads
        for key, g in grads.items():
            # within 1e-5 of the scale of its layer's gradients: a small entry of a layer is float32
            # rounding of sums of the layer's larger terms, in another order on two processes
            layer = key.rsplit(".", 1)[0] + "."
            scale = max([1.0] + [one_grads[k].abs().max().item() for k in one_grads if k.startswith(layer)])
            torch.testing.assert_close(g, one_grads[key], rtol=0, atol=1e-5 * scale, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", list(STATE))
def test_queue_and_bank_are_identical_on_every_rank_and_to_one_process(two_ranks, name):
    one = _state_after_steps(name, 3)
    ranks = [r[f"{name}-state"] for r in two_ranks]
    assert len(one) > 1 and ranks[0].keys() == one.keys()
    for key in one:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], one[key], rtol=1e-4, atol=1e-5, msg=key)


def test_views_are_shared_out_by_blocks_of_the_global_batch(monkeypatch):
    from sslcli import distributed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    two_views = torch.arange(8).repeat(2)  # [v1 of items 0..7, v2 of items 0..7]
    assert distributed.share(two_views, 8).tolist() == [4, 5, 6, 7, 4, 5, 6, 7]
    views = {"crops": [torch.arange(8), torch.arange(16)], "fixed": torch.arange(3), "scale": 2.0}
    shared = distributed.share(views, 8)
    assert shared["crops"][0].tolist() == [4, 5, 6, 7] and shared["fixed"].tolist() == [0, 1, 2]
    assert shared["scale"] == 2.0 and distributed.even(7) == 6
    tiles = torch.arange(8).repeat_interleave(3)  # three tiles per item, item after item
    assert distributed.share_items(tiles, 8).tolist() == [4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7]


def _torchrun_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "sslcli", *args]


def _torchrun(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(_torchrun_argv(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


TINY_RUN = ["--method", "simclr", "--set", "data.synthetic_train=64", "--set", "data.synthetic_val=32",
            "--set", "data.image_size=32", "--batch-size", "16", "--epochs", "2"]


def _layout(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != ".sslcli.lock")


def test_torchrun_writes_the_run_folder_of_one_process_and_knn_reads_it_on_two(tmp_path, cli):
    r = _torchrun("pretrain", *TINY_RUN, "--out", str(tmp_path / "d"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)  # rank 0 alone prints the result
    assert result["steps"] == 8 and "Traceback" not in r.stderr
    assert cli("pretrain", *TINY_RUN, "--out", tmp_path / "single", "--json").code == 0
    assert _layout(tmp_path / "d") == _layout(tmp_path / "single")
    metrics = [json.loads(line) for line in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if "step" in m and m["epoch"] in (1, 2)] == [1, 2]
    knn = cli("knn", tmp_path / "d", "--json", "--batch-size", "16")
    assert knn.code == 0 and 0 <= knn.json["top1"] <= 1
    # the two ranks extract features of alternate batches and both vote with all of them
    shared = _torchrun("knn", str(tmp_path / "d"), "--json", "--batch-size", "16", cwd=tmp_path)
    assert shared.returncode == 0, shared.stderr[-3000:]
    same = ("top1", "top5", "n_train", "n_val", "k")
    assert {k: json.loads(shared.stdout)[k] for k in same} == {k: knn.json[k] for k in same}


def test_torchrun_refuses_a_batch_that_does_not_split_in_one_line(tmp_path):
    r = _torchrun("pretrain", *TINY_RUN, "--batch-size", "15", "--out", str(tmp_path / "d"), cwd=tmp_path)
    assert r.returncode != 0 and not (tmp_path / "d").exists()
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "must split evenly over the 2 processes" in errors[0], r.stderr[-2000:]


def _start_torchrun(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(_torchrun_argv(*args), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        found += children
        frontier = children
    return found


def test_a_two_rank_run_killed_and_resumed_with_resume_auto_ends_as_if_never_stopped(tmp_path):
    import signal
    import time

    from safetensors.torch import load_file

    run = [*TINY_RUN, "--epochs", "4", "--set", "data.synthetic_train=128"]
    assert _torchrun("pretrain", *run, "--out", str(tmp_path / "whole"), cwd=tmp_path).returncode == 0
    job = _start_torchrun("pretrain", *run, "--out", str(tmp_path / "cut"), "--resume", "auto", cwd=tmp_path)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:  # kill in epoch 3, after two checkpoints
        done = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        if any(m.get("epoch") == 2 and "epoch_seconds" in m for m in done):
            break
        time.sleep(0.05)
    tree = _descendants(job.pid)
    assert len(tree) >= 2  # both ranks (torchrun starts them in sessions of their own)
    for pid in [job.pid, *tree]:  # as a scheduler ends a job: every process at once, no chance to save
        os.kill(pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL
    again = _torchrun("pretrain", *run, "--out", str(tmp_path / "cut"), "--resume", "auto", cwd=tmp_path)
    assert again.returncode == 0 and "resuming from epoch" in again.stderr, again.stderr[-3000:]
    whole, cut = load_file(tmp_path / "whole" / "backbone.safetensors"), load_file(tmp_path / "cut" / "backbone.safetensors")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':  # rank 1 alone diverges, at its third step\n"
        "    import torch\n"
        "    from sslcli.methods.simclr import SimCLR\n"
        "    step, calls = SimCLR.training_step, []\n"
        "    def diverging(self, views):\n"
        "        loss, metrics = step(self, views)\n"
        "        calls.extend([1] if self.training else [])  # not the dry step before the run\n"
        "        return (loss * float('nan') if len(calls) == 3 else loss), metrics\n"
        "    SimCLR.training_step = diverging\n")
    r = _torchrun("pretrain", *TINY_RUN, "--out", str(tmp_path / "d"), cwd=tmp_path,
                  env_extra={"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])})
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1, r.stderr[-3000:]
    assert "loss became nan at epoch 1, step 3" in errors[0]
    assert not [line for line in r.stderr.splitlines() if line.startswith("[rank")], r.stderr[-3000:]  # no worker traceback
    assert "exitcode  : 1" in r.stderr  # both ranks: the run failed, neither crashed


def test_sigterm_to_one_rank_stops_every_rank_with_one_checkpoint(tmp_path):
    import signal
    import time

    run = [*TINY_RUN, "--epochs", "3", "--set", "data.synthetic_train=128", "--out", str(tmp_path / "d")]
    job = _start_torchrun("pretrain", *run, cwd=tmp_path)
    metrics, deadline = tmp_path / "d" / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.05)
    rank1 = [pid for pid in _descendants(job.pid)
             if b"RANK=1\x00" in Path(f"/proc/{pid}/environ").read_bytes().replace(b"LOCAL_RANK", b"")]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGTERM)  # one rank alone is asked to stop
    _, err = job.communicate(timeout=300)
    stopped = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(stopped) == 1 and "checkpoint saved" in stopped[0], err[-3000:]
    codes = [line.split(":")[1].split()[0] for line in err.splitlines() if line.strip().startswith("exitcode")]
    assert codes and set(codes) == {"130"}, err[-3000:]  # both ranks stopped by the agreement, neither crashed
    ckpt = torch.load(tmp_path / "d" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["global_step"] < 3 * 8
    again = _torchrun("pretrain", *run, "--resume", cwd=tmp_path)
    assert again.returncode == 0 and f"step {ckpt['global_step']}" in again.stderr, again.stderr[-2000:]
