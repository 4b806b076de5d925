"""The evaluation commands' shared set-up: open the model and the data they are judged on."""

from __future__ import annotations

import time

import torch

from ..backbones import BackboneInfo, load_model
from ..data.sources import DataSource, open_source
from ..engine import select_device
from ..errors import UserError
from .features import extract_features
from .knn import knn_predict, topk_accuracy


def open_model_and_data(model_spec: str, data: str, purpose: str) -> tuple[torch.nn.Module, BackboneInfo, DataSource]:
    """The model and labelled data for an evaluation; images at the size the model was trained at."""
    size = "auto"
    if not model_spec.startswith("random:"):
        model, info = load_model(model_spec)
        size = info.input_size
    ds = open_source(data, size, purpose=purpose)
    if model_spec.startswith("random:"):
        model, info = load_model(model_spec, ds.image_size)
    if not ds.labelled:
        raise UserError(
            f"{purpose} needs labelled train and val splits, but '{data}' has "
            f"{'no labels' if not ds.train.labelled else 'no val split'}; use a folder of class subfolders "
            f"(optionally under train/ and val/)"
        )
    return model, info, ds


def run_knn(model_spec: str, data: str, *, k: int = 20, temperature: float = 0.07, batch_size: int = 256,
            device: str = "auto") -> dict:
    started = time.time()
    dev = select_device(device)
    model, info, ds = open_model_and_data(model_spec, data, "knn")
    train_f, train_y = extract_features(model, ds.train, dev, batch_size)
    val_f, val_y = extract_features(model, ds.val, dev, batch_size)
    scores = knn_predict(train_f, train_y, val_f, len(ds.classes), k=k, temperature=temperature)
    acc = topk_accuracy(scores, val_y, (1, 5))
    return {
        "top1": round(acc[1], 6), "top5": round(acc[5], 6), "k": k, "temperature": temperature,
        "n_train": len(ds.train), "n_val": len(ds.val), "model": model_spec, "data": data,
        "backbone": info.timm_name, "feature_dim": int(train_f.shape[1]), "seconds": round(time.time() - started, 2),
    }
