"""Crash safety under load: kill -9 a pretrain at N random moments, `--resume` after each, and
compare the final weights, tensor by tensor, with an uninterrupted run of the same recipe.

    python benchmarks/kill_resume.py --kills 20 -- --method simclr --epochs 6 \
        --set data.synthetic_train=96 --set data.synthetic_val=40 --set data.image_size=32 \
        --set backbone.small_input=false --batch-size 32

Everything after `--` is passed to `sslcli pretrain`. Each kill waits a uniform random time, counted from when the
(re)started run begins training (it rewrites recipe.yaml then).
Prints one JSON object: the seed, each kill's delay, how far each resume had got, and whether
the weights match.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "backbone.safetensors")), load_file(str(b / "backbone.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def started_at(run: Path) -> int | None:
    """When the run last (re)started training: it writes recipe.yaml then."""
    recipe = run / "recipe.yaml"
    return recipe.stat().st_mtime_ns if recipe.exists() else None


def checkpoint_step(run: Path) -> int | None:
    last = run / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    return int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--max-delay", type=float, help="longest wait before a kill, in seconds "
                        "(default: twice the training time over the number of kills)")
    parser.add_argument("--seed", type=int, help="seed of the kill moments (default: the clock)")
    parser.add_argument("--workdir", type=Path, help="where the two runs go (default: a temporary folder)")
    parser.add_argument("pretrain", nargs=argparse.REMAINDER, help="-- then the `sslcli pretrain` arguments")
    args = parser.parse_args()
    pretrain = [a for a in args.pretrain if a != "--"]
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sslcli-kill-"))
    cmd = [sys.executable, "-m", "sslcli", "pretrain", *pretrain]

    started = time.time()
    done = subprocess.run(cmd + ["--out", str(work / "straight"), "--force", "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    training = json.loads(done.stdout)["seconds"]
    max_delay = args.max_delay or 2 * training / max(1, args.kills)  # spread the kills over the whole run
    straight_wall = time.time() - started

    run, kills, resume, launches = work / "killed", [], [], 0
    subprocess.run(["rm", "-rf", str(run)], check=True)
    while True:
        launches += 1
        before = started_at(run)
        proc = subprocess.Popen(cmd + ["--out", str(run), *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if len(kills) < args.kills:
            while started_at(run) == before and proc.poll() is None:  # each (re)start rewrites recipe.yaml
                time.sleep(0.005)
            delay = rng.uniform(0, max_delay)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        if proc.returncode == 0:
            break
        if proc.returncode != -signal.SIGKILL:
            sys.exit(f"resume {launches} failed with exit code {proc.returncode}: {err.decode()[-2000:]}")
        kills.append({"delay_s": round(delay, 3), "checkpoint_step": checkpoint_step(run)})
        resume = ["--resume"]
    print(json.dumps({
        "seed": seed, "kills": len(kills), "launches": launches, "training_s": training,
        "straight_wall_s": round(straight_wall, 1), "identical": same_weights(work / "straight", run),
        "moments": kills, "workdir": str(work),
    }))


if __name__ == "__main__":
    main()
