"""`sslcli finetune`: a model's weights and a new linear head trained with labels through the
pretraining engine and its `finetune` recipe, then scored on the val split."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from rich.console import Console

from .recipe import Recipe

if TYPE_CHECKING:
    from .backbones import ModelRef


def finetune_recipe(model: str | ModelRef, choice: Any, recipe: str, overrides: list, **keys: Any) -> Recipe:
    """The bundled or given fine-tuning recipe with the model's backbone (name, input, weights),
    the chosen data, the command's options (`keys`: fraction, epochs, batch_size, device) and
    the parsed --set `overrides`, which win."""
    from .backbones import parse_model, read_weights
    from .catalog import find_recipe
    from .recipe import apply_overrides, read_yaml, resolve_recipe
    from .registry import get_method

    raw = read_yaml(find_recipe(recipe))
    ref = parse_model(model)
    if ref.is_random:
        model_keys = {("backbone", "name"): ref.random_name, ("backbone", "weights"): None}
    else:
        _, info, weights = read_weights(ref)
        model_keys = {("backbone", "name"): info.timm_name, ("backbone", "small_input"): info.small_input,
                      ("backbone", "weights"): str(weights), ("data", "image_size"): info.input_size}
    shortcuts = {**model_keys, ("data", "source"): choice.source, ("data", "root"): choice.root,
                 ("data", "fraction"): keys["fraction"], ("train", "epochs"): keys["epochs"],
                 ("train", "batch_size"): keys["batch_size"], ("train", "device"): keys["device"]}
    overrides = [(list(key), value) for key, value in shortcuts.items() if value is not None or key[1] == "weights"] + overrides
    return resolve_recipe(apply_overrides(raw, overrides), lambda name: get_method(name).Config)


def run_finetune(model: str | ModelRef, data: Optional[str], data_root: Optional[str], *, fraction: float, epochs: Optional[int],
                 out: Optional[Path], recipe: str, batch_size: Optional[int], settings: list[str], force: bool,
                 device: Optional[str], console: Console) -> dict:
    """Fine-tune `model` into run folder `out` and return the --json result (also written as
    eval.json); everything that can be refused is refused before `out` is touched."""
    from .backbones import parse_model
    from .evaluation.run import DataChoice, announce, choose_data, classifier_accuracy, data_fields
    from .files import atomic_write
    from .recipe import parse_set
    from .runfolder import check_out, create_out

    model = parse_model(model)
    overrides = [parse_set(item) for item in settings]
    set_data = [value for key, value in overrides if key == ["data", "source"]]
    choice = DataChoice(str(set_data[-1]), None, "--data") if set_data and not data else choose_data(model, data, data_root)
    resolved = finetune_recipe(model, choice, recipe, overrides, fraction=fraction, epochs=epochs, batch_size=batch_size,
                               device=device)
    out = out or Path("runs") / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"

    from .engine import Trainer, ranks

    with ranks.joined(resolved.train.device):  # under torchrun: one run on every rank, rank 0 writing
        check_out(out, False, force)
        ranks.barrier()  # every rank has checked --out before rank 0 creates it
        trainer = Trainer(resolved, out, console)
        trainer.prepare()
        announce(choice, model)
        with ranks.on_main(lambda: create_out(out, force)):
            console.print(f"fine-tuning {model} on {choice.source} (fraction {fraction:g}) -> {out}", soft_wrap=True)
            trained = trainer.run()
            scores = classifier_accuracy(trainer.method, trainer.data.val.for_eval(resolved.data.eval_frames),
                                         trainer.device)
            result = {**scores, "model": str(model), **data_fields(choice), "fraction": fraction,
                      "n_train": len(trainer.data.train), "n_val": len(trainer.data.val), "epochs": resolved.train.epochs,
                      "out": str(out), "seconds": trained["seconds"]}
            if ranks.is_main():
                atomic_write(out / "eval.json", (json.dumps(result, indent=2) + "\n").encode())
    return result
