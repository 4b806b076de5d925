"""The evaluation commands behind the CLI: open the model and the data, extract, judge."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ..backbones import BackboneInfo, load_model
from ..data.sources import DataSource, Split, load_image, open_source
from ..engine import select_device
from ..errors import UserError
from .features import extract_features, select_layers
from .knn import knn_predict, topk_accuracy


def _run_data_section(model_spec: str) -> dict:
    """The `data` section of a run folder's recipe.yaml, or {} for other models."""
    recipe = Path(model_spec) / "recipe.yaml"
    if model_spec.startswith("random:") or not recipe.is_file():
        return {}
    import yaml

    try:
        section = (yaml.safe_load(recipe.read_text()) or {}).get("data")
    except (yaml.YAMLError, AttributeError):
        return {}
    return section if isinstance(section, dict) else {}


def default_data(model_spec: str, data: str | None) -> str:
    """`--data` as given, else the data a run folder was trained on, else synthetic:shapes."""
    if data:
        return data
    source = _run_data_section(model_spec).get("source")
    return source if isinstance(source, str) and source else "synthetic:shapes"


def open_model_and_data(model_spec: str, data: str, purpose: str, need_labels: bool = True
                        ) -> tuple[torch.nn.Module, BackboneInfo, DataSource]:
    """The model and data for an evaluation; images at the size the model was trained at."""
    size = "auto"
    if model_spec.startswith("random:"):  # refuse a bad name before the data is read
        from ..backbones import check_backbone_name

        if not model_spec[len("random:"):]:
            raise UserError("'random:' needs a timm model name, e.g. random:resnet18")
        check_backbone_name(model_spec[len("random:"):])
    else:
        model, info = load_model(model_spec)
        size = info.input_size
    bad = _run_data_section(model_spec).get("max_bad_fraction")  # a run's own tolerance for damaged images
    ds = open_source(data, size, purpose="eval", **({"max_bad_fraction": float(bad)} if isinstance(bad, (int, float)) else {}))
    if model_spec.startswith("random:"):
        model, info = load_model(model_spec, ds.image_size)
    if need_labels and not ds.labelled:
        raise UserError(
            f"{purpose} needs labelled train and val splits, but '{data}' has "
            f"{'no labels' if not ds.train.labelled else 'no val split'}; use a folder of class subfolders "
            f"(optionally under train/ and val/)"
        )
    return model, info, ds


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--k '{text}' must be a number or a comma-separated list, e.g. --k 10,20,50") from None
    if not ks or min(ks) < 1:
        raise UserError(f"--k '{text}' must hold positive numbers, e.g. --k 20")
    return ks


def run_knn(model_spec: str, data: str, *, k: str | int = 20, temperature: float = 0.07, layer: str = "last",
            batch_size: int = 256, device: str = "auto") -> dict:
    """Weighted kNN from train to val; several k values share one feature pass."""
    started = time.time()
    ks = parse_ks(str(k))
    dev = select_device(device)
    model, info, ds = open_model_and_data(model_spec, data, "knn")
    chosen = select_layers(model, layer)
    if len(chosen) != 1:
        raise UserError(f"--layer takes one layer, got '{layer}'; use `sslcli probe --layers` for several")
    layers = None if chosen[0] is None else chosen
    train_f, train_y = _features(model, ds.train, dev, batch_size, layers)
    val_f, val_y = _features(model, ds.val, dev, batch_size, layers)
    sweep = []
    for kk in ks:
        scores = knn_predict(train_f, train_y, val_f, len(ds.classes), k=kk, temperature=temperature)
        acc = topk_accuracy(scores, val_y, (1, 5))
        sweep.append({"k": kk, "top1": round(acc[1], 6), "top5": round(acc[5], 6)})
    result = {
        **sweep[0], "temperature": temperature, "layer": layer, "n_train": len(ds.train), "n_val": len(ds.val),
        "model": model_spec, "data": data, "backbone": info.timm_name, "feature_dim": int(train_f.shape[1]),
        "seconds": round(time.time() - started, 2),
    }
    if len(ks) > 1:
        result["sweep"] = sweep
    return result


def _features(model, split, device, batch_size, layers):
    if layers is None:
        return extract_features(model, split, device, batch_size)
    feats, labels = extract_features(model, split, device, batch_size, layers=layers)
    return next(iter(feats.values())), labels


def run_probe(model_spec: str, data: str, *, layers: str = "last", epochs: int = 100, lr: float = 1e-3,
              weight_decay: float = 1e-4, batch_size: int = 256, device: str = "auto", seed: int = 0) -> dict:
    """Linear probes on frozen features of each chosen layer; features extracted once."""
    from .probe import train_linear_probe

    started = time.time()
    dev = select_device(device)
    model, info, ds = open_model_and_data(model_spec, data, "probe")
    chosen = select_layers(model, layers)
    train_f, train_y = extract_features(model, ds.train, dev, 256, normalize=False, layers=chosen)
    val_f, val_y = extract_features(model, ds.val, dev, 256, normalize=False, layers=chosen)
    extracted = time.time() - started
    rows = []
    for name in train_f:
        acc = train_linear_probe(train_f[name], train_y, val_f[name], val_y, len(ds.classes), epochs=epochs, lr=lr,
                                 weight_decay=weight_decay, batch_size=batch_size, seed=seed, device=dev)
        rows.append({"layer": name, "dims": int(train_f[name].shape[1]),
                     **{k: round(v, 6) for k, v in acc.items()}})
    return {
        "model": model_spec, "data": data, "backbone": info.timm_name, "layers": rows, "epochs": epochs, "lr": lr,
        "weight_decay": weight_decay, "n_train": len(ds.train), "n_val": len(ds.val),
        "extract_seconds": round(extracted, 2), "seconds": round(time.time() - started, 2),
    }


@torch.no_grad()
def classifier_accuracy(method, split, device: torch.device, batch_size: int = 256, precision: str = "auto") -> dict:
    """Top-1/top-5 of a trained supervised method on a labelled split (whole images, no augmentation)."""
    method.eval()
    scores, labels = extract_features(method.classify, split, device, batch_size, precision, normalize=False)
    acc = topk_accuracy(scores, labels, (1, 5))
    return {"top1": round(acc[1], 6), "top5": round(acc[5], 6)}


def run_neighbours(model_spec: str, data: str, out: Path, *, queries: int = 8, k: int = 8,
                   query_files: list[str] | None = None, seed: int = 0, device: str = "auto", cell: int = 96) -> dict:
    """A PNG grid of each query's nearest training images; queries are random val images or files."""
    from .neighbours import draw_grid, neighbour_rows

    if out.suffix.lower() != ".png":
        raise UserError(f"--out '{out}' must end in .png")
    if not out.parent.exists():
        raise UserError(f"--out folder '{out.parent}' does not exist; create it first")
    dev = select_device(device)
    model, info, ds = open_model_and_data(model_spec, data, "visualize-neighbours", need_labels=False)
    kept: list[torch.Tensor] = []
    train_f, _ = extract_features(model, ds.train, dev, kept=kept)
    train = ds.train if len(train_f) == len(ds.train) else ds.train.subset(torch.cat(kept))
    if query_files:
        images, labels = [], []
        for name in query_files:
            path = Path(name)
            if not path.is_file():
                raise UserError(f"--query '{name}' is not a file; give an image path")
            try:
                images.append(load_image(path, ds.image_size))
            except OSError as exc:
                raise UserError(f"--query '{name}' cannot be read as an image ({exc})") from None
            parent = path.parent.name
            labels.append(ds.classes.index(parent) if ds.classes and parent in ds.classes else -1)
        q_images, q_labels = torch.stack(images), torch.tensor(labels)
    else:
        pool = ds.val if ds.val is not None else ds.train
        pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:queries]
        q_images = torch.stack([pool[i][0] for i in pick.tolist()])
        q_labels = pool.labels[pick]
    q_f, _ = extract_features(model, Split(labels=q_labels, images=q_images, size=ds.image_size), dev)
    rows = neighbour_rows(q_images, q_labels, q_f, train, train_f, ds.classes, k)
    grid = draw_grid(rows, cell=cell, header=["query"] + [f"#{i + 1}" for i in range(k)])
    tmp = out.with_name(out.name + ".tmp.png")
    grid.save(tmp)
    os.replace(tmp, out)
    same = [tile.colour == (30, 160, 60) for row in rows for tile in row[1:]]
    return {"out": str(out), "queries": len(rows), "k": k, "model": model_spec, "data": data,
            "same_class_fraction": round(sum(same) / max(1, len(same)), 4), "size": list(grid.size)}
