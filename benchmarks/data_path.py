"""The data path alone at ImageNet scale, per worker: JPEG files in, two augmented 224-px views
out, one process and one thread, no model.

- `sslcli`: the path `sslcli pretrain` takes for a folder too large to hold in memory: each file
  decoded to a `--image-size` square (simplejpeg, reduced-scale decoding where the file allows),
  then SimCLR's augmentation on the whole uint8 batch;
- `torchvision`: the usual per-image pipeline: PIL decode, then `transforms` (random resized
  crop, flip, colour jitter, grayscale, Gaussian blur, to tensor, normalise) twice per image.

Both use the same augmentation settings. Without `--data`, it first writes `--count` JPEGs of
`--width`x`--height` (ImageNet's typical size) made from tiny-imagenet-10 images, enlarged and
grained so they do not compress like flat colour:

    python benchmarks/data_path.py --from ../shared/data/tiny-imagenet-10/train

Prints one JSON line per pipeline, and their ratio. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

AUGMENT = dict(crop_scale=(0.2, 1.0), flip=0.5, color_jitter=0.4, color_jitter_prob=0.8, grayscale=0.2, blur=0.5,
               blur_sigma=(0.1, 2.0))


def make_folder(source: Path, out: Path, count: int, width: int, height: int) -> Path:
    """`count` JPEGs (quality 90) of width x height from the images under `source`."""
    rng = np.random.default_rng(0)
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    for i, path in enumerate(files):
        big = Image.open(path).convert("RGB").resize((width, height), Image.BICUBIC)
        grain = rng.normal(0, 6, (height, width, 3))
        pixels = np.clip(np.asarray(big, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(out / f"{i:05d}.jpg", quality=90)
    return out


def ours(folder: Path, args) -> float:
    """Seconds for every file through sslcli's streaming path (the trainer's own data, not held in
    memory, no loader processes) into two views."""
    from rich.console import Console

    from sslcli.engine import Trainer, epoch_order, iterate_batches
    from sslcli.engine.views import method_batch
    from sslcli.recipe import resolve_recipe
    from sslcli.registry import get_method

    augment = {k: list(v) if isinstance(v, tuple) else v for k, v in AUGMENT.items()}
    raw = {"method": {"name": "simclr"}, "backbone": {"name": "resnet18"},
           "data": {"source": str(folder), "image_size": args.image_size, "cache_max_gb": 0, "workers": 0},
           "augment": {"crop_size": args.crop, **augment}, "train": {"batch_size": args.batch_size}}
    recipe = resolve_recipe(raw, lambda name: get_method(name).Config)
    trainer = Trainer(recipe, Path(tempfile.mkdtemp()), Console(file=open("/dev/null", "w")))
    ds = trainer.prepare()
    assert not ds.train.in_memory
    method = trainer.method
    gen = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    count = 0
    with torch.no_grad():
        for batch in iterate_batches(ds.train, epoch_order(len(ds.train), 0, 0), args.batch_size, 0, 0):
            views = method.batch_views(method_batch(method, batch.images, batch.indices, batch.labels, None), gen)
            count += batch.images.shape[0]
    assert views[0].shape[-1] == args.crop
    return (time.perf_counter() - started) / count


def torchvision_pipeline(folder: Path, args) -> float:
    """Seconds per file through a per-image PIL torchvision pipeline into two views."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    import torchvision.transforms as T

    s = AUGMENT["color_jitter"]
    view = T.Compose([
        T.RandomResizedCrop(args.crop, scale=AUGMENT["crop_scale"]),
        T.RandomHorizontalFlip(AUGMENT["flip"]),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=AUGMENT["color_jitter_prob"]),
        T.RandomGrayscale(AUGMENT["grayscale"]),
        T.RandomApply([T.GaussianBlur(23, sigma=AUGMENT["blur_sigma"])], p=AUGMENT["blur"]),
        T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    torch.manual_seed(0)
    started = time.perf_counter()
    for i in range(0, len(files), args.batch_size):
        pairs = []
        for path in files[i:i + args.batch_size]:
            with Image.open(path) as img:
                img = img.convert("RGB")
                pairs.append((view(img), view(img)))
        views = [torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])]
    assert views[0].shape[-1] == args.crop
    return (time.perf_counter() - started) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a folder of JPEGs (default: write one from --from)")
    parser.add_argument("--from", dest="source", default="../shared/data/tiny-imagenet-10/train")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--image-size", type=int, default=256, help="sslcli's data.image_size")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the files; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker: one process, one thread

    folder = Path(args.data) if args.data else make_folder(Path(args.source), Path(tempfile.mkdtemp()), args.count,
                                                           args.width, args.height)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    setting = {"files": len(files), "mean_kb": round(sum(p.stat().st_size for p in files) / len(files) / 1024, 1),
               "crop": args.crop, "batch_size": args.batch_size, "threads": 1}
    rates = {}
    for name, run in (("sslcli", ours), ("torchvision", torchvision_pipeline)):
        rates[name] = 1 / min(run(folder, args) for _ in range(args.rounds))
        extra = {"image_size": args.image_size} if name == "sslcli" else {}
        print(json.dumps({"what": "data_path", "pipeline": name, **setting, **extra,
                          "images_per_s": round(rates[name], 1)}), flush=True)
    print(json.dumps({"what": "data_path_ratio", "ratio": round(rates["sslcli"] / rates["torchvision"], 2)}),
          flush=True)


if __name__ == "__main__":
    main()
