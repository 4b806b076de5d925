"""Does a backbone's BatchNorm state hold its probe back? Probe every stage of a model as saved,
then again from the same weights after re-estimating every BatchNorm layer's running statistics
on training images of the probe's data (AdaBN: statistics reset, averaged over a seeded sample in
train mode, weights unchanged). Run it on `random:resnet18` too, to see what re-estimation alone
gives.

    python benchmarks/bn_recalibration.py runs/colorization --data ../shared/data/tiny-imagenet-10
    python benchmarks/bn_recalibration.py random:resnet18 --data ../shared/data/tiny-imagenet-10

Prints one JSON object: linear-probe top-1 on val for each stage, as saved and recalibrated.
"""

from __future__ import annotations

import argparse
import json

import torch

from sslcli.data.augment import eval_view
from sslcli.data.images import load_batches
from sslcli.evaluation.features import extract_features, select_layers
from sslcli.evaluation.probe import train_linear_probe
from sslcli.evaluation.run import open_model_and_data


def probe_all_layers(model, data, device) -> dict[str, float]:
    chosen = select_layers(model, "all")
    train_x, train_y = extract_features(model, data.train, device, 256, normalize=False, layers=chosen)
    val_x, val_y = extract_features(model, data.val, device, 256, normalize=False, layers=chosen)
    return {name: round(train_linear_probe(train_x[name], train_y, val_x[name], val_y, len(data.classes),
                                           device=device)["top1"], 3) for name in train_x}


@torch.no_grad()
def recalibrate_batchnorm(model, split, images: int, batch: int = 256, seed: int = 0) -> None:
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over every batch seen
    model.train()
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:images]
    for batch_images, _, _ in load_batches(split, list(pick.split(batch))):
        model(eval_view(batch_images))
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="run folder, weight file or random:TIMM_NAME")
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=2048, help="training images the statistics are averaged over")
    args = parser.parse_args()
    device = torch.device("cpu")
    result = {"model": args.model, "images": args.images}
    for mode in ("saved", "recalibrated"):
        model, _, data = open_model_and_data(args.model, args.data, "probe")
        if mode == "recalibrated":
            recalibrate_batchnorm(model, data.train, args.images)
        result[mode] = probe_all_layers(model, data, device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
