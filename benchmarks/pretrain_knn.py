"""Quality and speed of a pretraining recipe: wall time, mean epoch time and peak memory of
`sslcli pretrain`, then weighted kNN of the result against the random-init floor, through the
real command line.

    python benchmarks/pretrain_knn.py --recipe simclr-tiny-imagenet \
        --data ../shared/data/tiny-imagenet-10 --epochs 30 --k 20 --temperature 0.1

Prints one JSON object; the pretrain's own progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def sslcli(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "sslcli", *args, "--json"], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"sslcli {' '.join(args)} failed with exit code {done.returncode}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--out", type=Path, help="run folder (default runs/bench-RECIPE)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--floor", default="random:resnet18", help="the model to beat")
    parser.add_argument("--set", action="append", default=[], help="extra recipe overrides")
    args = parser.parse_args()

    out = args.out or Path("runs") / f"bench-{Path(args.recipe).stem}"
    cmd = ["pretrain", "--recipe", args.recipe, "--data", args.data, "--out", str(out), "--force"]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    for item in args.set:
        cmd += ["--set", item]
    started = time.time()
    trained = sslcli(*cmd)
    wall = time.time() - started
    knn_args = ["--data", args.data, "--k", str(args.k), "--temperature", str(args.temperature)]
    ours = sslcli("knn", str(out), *knn_args)
    floor = sslcli("knn", args.floor, *knn_args)
    print(json.dumps({
        "recipe": args.recipe, "epochs": trained["epochs"], "pretrain_wall_s": round(wall, 1),
        "train_s": trained["seconds"], "epoch_s": trained.get("epoch_seconds"),
        "peak_memory_mb": trained.get("peak_memory_mb"), "knn_top1": ours["top1"], "knn_top5": ours["top5"],
        "floor": args.floor, "floor_top1": floor["top1"], "gain": round(ours["top1"] - floor["top1"], 4),
        "k": args.k, "temperature": args.temperature, "out": str(out),
    }))


if __name__ == "__main__":
    main()
