"""Memory soak: resident memory per epoch while `sslcli pretrain` streams an image folder larger
than `data.cache_max_gb`, so every epoch decodes every image again in worker processes.

Generates the folder once (class subfolders of random-colour JPEGs), runs the real command in a
subprocess, samples the resident memory of its whole process tree (the trainer and its loader
workers) every 0.2 s, and prints one JSON line per epoch with the peak seen during it. Memory is
bounded when the peaks after the first epoch stay flat.

    python benchmarks/memory_soak.py --images 30000 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def write_folder(root: Path, images: int, size: int, classes: int = 10) -> None:
    """`images` JPEGs of `size` px in `classes` class folders (skipped when already there)."""
    import numpy as np
    from PIL import Image

    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) >= images:
        return
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, 3) * 0.8 + rng.normal(0, 30, (size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=85)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MB (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):  # a worker that just exited
            continue
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--size", type=int, default=64, help="side of the generated JPEGs")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--method", default="rotation")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/sslcli-soak/images"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/sslcli-soak/run"))
    args = parser.parse_args()

    started = time.time()
    write_folder(args.folder, args.images, args.size)
    print(json.dumps({"images": args.images, "generated_s": round(time.time() - started, 1)}), flush=True)
    cmd = [sys.executable, "-m", "sslcli", "pretrain", "--method", args.method, "--data", str(args.folder),
           "--epochs", str(args.epochs), "--batch-size", "128", "--set", "data.image_size=32",
           "--set", "data.cache_max_gb=0.01", "--set", "data.workers=1", "--set", "train.log_every=1000000",
           "--out", str(args.out), "--force"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = args.out / "metrics.jsonl"
    peaks: dict[int, float] = {}
    while proc.poll() is None:
        done = sum(1 for line in metrics.open() if "epoch_seconds" in line) if metrics.is_file() else 0
        epoch = min(done + 1, args.epochs)
        peaks[epoch] = max(peaks.get(epoch, 0.0), tree_rss_mb(proc.pid))
        time.sleep(0.2)
    if proc.returncode != 0:
        sys.exit(f"pretrain failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    records = [json.loads(line) for line in metrics.open() if "epoch_seconds" in line]
    for record in records:
        epoch = record["epoch"]
        print(json.dumps({"epoch": epoch, "peak_rss_mb": round(peaks.get(epoch, 0.0), 1),
                          "images_per_s": round(record["images_per_s"], 1),
                          "epoch_seconds": round(record["epoch_seconds"], 1)}), flush=True)


if __name__ == "__main__":
    main()
