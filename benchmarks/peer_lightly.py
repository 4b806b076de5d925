"""SimCLR training throughput with the lightly library, for `throughput.py --peer-python`: run by
another environment's Python that has lightly installed (sslcli never imports lightly).

Lightly's own recipe: a torchvision ResNet-18 without its classifier, lightly's SimCLR projection
head and NT-Xent loss, its `SimCLRTransform` on PIL images from a folder of class subfolders, a
DataLoader with `--workers` processes, SGD. Channels-last and `--precision` are set as sslcli's run
has them, so the two differ only in their own code. Prints one JSON line: steady-state pairs per
second.

    PEER/bin/python benchmarks/peer_lightly.py --data ../shared/data/tiny-imagenet-10/train --size 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder of class subfolders of images")
    parser.add_argument("--size", type=int, default=64, help="side of the views")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    import lightly
    import torch
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    head = SimCLRProjectionHead(512, 512, 128)
    model = torch.nn.Sequential(backbone, head).to(memory_format=torch.channels_last)
    criterion = NTXentLoss(temperature=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=1e-6)
    dataset = torchvision.datasets.ImageFolder(args.data, transform=SimCLRTransform(input_size=args.size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    need = args.warmup + args.steps
    if len(loader) < need:
        raise SystemExit(f"the data gives {len(loader)} batches; --warmup + --steps needs {need}")
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    model.train()
    batches = iter(loader)
    for step in range(need):
        if step == args.warmup:
            started = time.perf_counter()
        (x0, x1), _ = next(batches)
        with precision:
            z0 = model(x0.contiguous(memory_format=torch.channels_last))
            z1 = model(x1.contiguous(memory_format=torch.channels_last))
        loss = criterion(z0.float(), z1.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    step_s = (time.perf_counter() - started) / args.steps
    print(json.dumps({"what": "peer", "library": "lightly", "version": lightly.__version__, "torch": torch.__version__,
                      "batch_size": args.batch_size, "view_size": args.size, "workers": args.workers,
                      "precision": args.precision, "torch_threads": torch.get_num_threads(),
                      "pairs_per_s": round(args.batch_size / step_s, 1), "step_s": round(step_s, 4)}), flush=True)


if __name__ == "__main__":
    main()
