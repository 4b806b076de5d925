"""Pretraining speed of a recipe against its own floor, in one process:

- `pretrain`: steady-state steps of the real training step (the engine's own, data loading
  included), in source images per second, warm-up excluded;
- `floor`: the backbone alone (forward, backward, SGD) on in-memory tensors of the same views'
  shapes, precision and memory format, plus the forward of a momentum encoder (MoCo, BYOL) where
  the method has one: what the step could reach if everything around the backbones were free;
- `data`: the data path alone (read, decode, augment into views; no model);
- `startup`: seconds from this script's start to the end of the first training step;
- with `--peer-python PATH` (SimCLR only): the same measurement with the lightly library, run by
  another environment's Python (`benchmarks/peer_lightly.py`), and the side-by-side ratio.

    python benchmarks/throughput.py --recipe simclr-tiny-imagenet --data ../shared/data/tiny-imagenet-10 \
        --set augment.crop_size=64 --set train.batch_size=128

Prints one JSON line per result, so runs compare over time. Run nothing else meanwhile.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before torch is imported: start-up includes the imports

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def view_tensors(views) -> list:
    """The float image tensors among a method's views (what its backbone sees), as (N, C, H, W)."""
    import torch

    if isinstance(views, torch.Tensor):
        return [views.flatten(0, views.ndim - 4)] if views.ndim >= 4 and views.is_floating_point() else []
    if isinstance(views, (list, tuple)):
        return [t for v in views for t in view_tensors(v)]
    if isinstance(views, dict):
        return [t for v in views.values() for t in view_tensors(v)]
    return []


def momentum_backbones(method) -> list:
    """The method's frozen copies of its backbone (MoCo's key encoder, BYOL's target)."""
    return [m for m in method.children() if m is not method.backbone and type(m) is type(method.backbone)
            and not any(p.requires_grad for p in m.parameters())]


def timed(step, warmup: int, steps: int) -> float:
    """Mean seconds per call of `step` after `warmup` calls."""
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", action="append", default=[], help="recipe overrides, as `sslcli pretrain --set`")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--peer-python", help="a Python with the lightly library installed, for the side-by-side")
    parser.add_argument("--peer-workers", type=int, default=2, help="DataLoader workers of the peer run")
    args = parser.parse_args()

    import torch
    from rich.console import Console

    from sslcli.device import autocast
    from sslcli.engine import Trainer, build_optimizer, epoch_order, iterate_batches
    from sslcli.catalog import find_recipe
    from sslcli.recipe import apply_overrides, parse_set, read_yaml, resolve_recipe
    from sslcli.registry import get_method

    raw = apply_overrides(read_yaml(find_recipe(args.recipe)), [(["data", "source"], args.data)] +
                          [parse_set(item) for item in args.set])
    recipe = resolve_recipe(raw, lambda name: get_method(name).Config)
    t = recipe.train
    trainer = Trainer(recipe, Path(tempfile.mkdtemp()), Console(file=open("/dev/null", "w")))
    ds = trainer.prepare()
    method, device, dtype = trainer.method, trainer.device, trainer.dtype
    optimizer = build_optimizer(method, recipe)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    gen = torch.Generator(device=device).manual_seed(t.seed + 1)
    workers = trainer._workers(ds.train)
    order = epoch_order(len(ds.train), t.seed, 0)
    need = args.warmup + args.steps + 1
    if len(order) // t.batch_size < need:
        raise SystemExit(f"the data holds {len(order) // t.batch_size} batches; --warmup + --steps + 1 needs {need}")
    batches = iterate_batches(ds.train.for_epoch(t.seed, 0), order, t.batch_size, 0, workers)
    setting = {"recipe": args.recipe, "method": recipe.method.name, "backbone": recipe.backbone.name,
               "batch_size": t.batch_size, "image_size": ds.image_size, "view_size": method.crop_size,
               "precision": str(dtype).replace("torch.", "") if dtype else "fp32", "channels_last": t.channels_last,
               "device": str(device), "workers": workers, "torch_threads": torch.get_num_threads()}

    method.train()
    first = next(batches)
    trainer._step(method, first, gen, optimizer, scaler)
    print(json.dumps({"what": "startup", **setting, "seconds": round(time.perf_counter() - STARTED, 2)}), flush=True)
    step_s = timed(lambda: trainer._step(method, next(batches), gen, optimizer, scaler), args.warmup, args.steps)

    views = method.batch_views(_device_batch(first, method, device), gen)
    if t.channels_last:
        from sslcli.engine.views import channels_last

        views = channels_last(views)
    shapes = [tuple(v.shape) for v in view_tensors(views)]
    if not shapes:
        raise SystemExit(f"found no image tensor among the views of '{recipe.method.name}' to measure the floor on")
    inputs = [torch.randn(s, device=device).contiguous(
        memory_format=torch.channels_last if t.channels_last else torch.contiguous_format) for s in shapes]
    backbone = method.backbone
    sgd = torch.optim.SGD(backbone.parameters(), lr=1e-3, momentum=0.9)
    teachers = momentum_backbones(method)

    def floor_step():
        sgd.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = sum(backbone(x).float().mean() for x in inputs)
            with torch.no_grad():  # a momentum encoder's forward over the same views is part of the method
                for teacher in teachers:
                    for x in inputs:
                        teacher(x)
        loss.backward()
        sgd.step()

    floor_s = timed(floor_step, args.warmup, args.steps)
    data_batches = iterate_batches(ds.train.for_epoch(t.seed, 1), epoch_order(len(ds.train), t.seed, 1),
                                   t.batch_size, 0, workers)

    def data_step():
        batch = next(data_batches)
        method.batch_views(_device_batch(batch, method, device), gen)

    with torch.no_grad():
        data_s = timed(data_step, 1, min(args.steps, len(order) // t.batch_size - 1))
    images = t.batch_size
    print(json.dumps({"what": "pretrain", **setting, "images_per_s": round(images / step_s, 1),
                      "step_s": round(step_s, 4), "ratio_to_floor": round(step_s / floor_s, 3),
                      "peak_rss_mb": peak_rss_mb()}), flush=True)
    print(json.dumps({"what": "floor", **setting, "views": shapes, "momentum_encoders": len(teachers),
                      "images_per_s": round(images / floor_s, 1),
                      "step_s": round(floor_s, 4)}), flush=True)
    print(json.dumps({"what": "data", **setting, "images_per_s": round(images / data_s, 1),
                      "step_s": round(data_s, 4), "share_of_step": round(data_s / step_s, 3)}), flush=True)
    if args.peer_python:
        peer(args, setting, images / step_s)


def peer(args, setting: dict, ours_per_s: float) -> None:
    """Run `peer_lightly.py` with the peer's Python on the same data and settings; print its line
    and the side-by-side ratio (source images per second = pairs per second for SimCLR)."""
    import subprocess
    import sys

    if setting["method"] != "simclr":
        raise SystemExit("--peer-python compares SimCLR only")
    folder = Path(args.data) / "train" if (Path(args.data) / "train").is_dir() else Path(args.data)
    cmd = [args.peer_python, str(Path(__file__).with_name("peer_lightly.py")), "--data", str(folder),
           "--size", str(setting["view_size"]), "--batch-size", str(setting["batch_size"]),
           "--workers", str(args.peer_workers), "--precision", "bf16" if setting["precision"] == "bfloat16" else "fp32",
           "--warmup", str(args.warmup), "--steps", str(args.steps)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"the peer run failed with exit code {done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    print(json.dumps({"what": "side_by_side", "recipe": setting["recipe"], "precision": setting["precision"],
                      "ours_pairs_per_s": round(ours_per_s, 1), "peer_pairs_per_s": result["pairs_per_s"],
                      "ratio": round(ours_per_s / result["pairs_per_s"], 2)}), flush=True)


def _device_batch(batch, method, device):
    from sslcli.engine.views import method_batch

    return method_batch(method, batch.images.to(device), batch.indices, batch.labels, batch.audio)


if __name__ == "__main__":
    main()
