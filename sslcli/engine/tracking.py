"""Loggers for the experiment trackers people already use: TensorBoard, Weights & Biases and
MLflow, chosen with `train.loggers`. Each lives in an optional extra and is imported only by a
run that asks for it; a missing one is refused before the run starts, naming the extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .loggers import RunStart

# logger name -> (module that must be importable, extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
PICTURES = ("curves.png", "visual.png")  # logged as images when the run ends, where written


def check_trackers(names: list[str]) -> None:
    """Refuse a tracker whose package is not installed (looked up, not imported)."""
    for name in names:
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name][0]) is None:
            raise UserError(f"train.loggers names '{name}', but the {EXTRAS[name][0]} package is not installed; "
                            f"pip install \"sslcli[{EXTRAS[name][1]}]\", or drop '{name}' from train.loggers")


def _scalars(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")}


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested recipe as {"optim.lr": 0.3, ...}: the hyperparameters trackers show."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat


def _due(run: Optional[RunStart], record: dict) -> bool:
    """Whether a step record is one that metrics.jsonl keeps too (every `train.log_every` steps)."""
    return run is not None and record["step"] % run.log_every == 0


def _pictures(out: Path) -> list[Path]:
    return [out / name for name in PICTURES if (out / name).is_file()]


class TensorBoard:
    """Event files in RUN/tensorboard/: step scalars under train/, epoch means under epoch/, the
    recipe as text, curves.png and visual.png as images."""

    def __init__(self, out: Path, recipe: dict):
        self.out, self.recipe, self.writer, self.started = out, recipe, None, None

    def start(self, run: RunStart) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.started = run
        self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=run.done_steps + 1 if run.done_steps else None)
        if not run.done_steps:
            self.writer.add_text("recipe", "```\n" + yaml.safe_dump(self.recipe, sort_keys=False) + "```", 0)

    def log_step(self, record: dict) -> None:
        if _due(self.started, record):
            for key, value in _scalars(record).items():
                self.writer.add_scalar(f"train/{key}", value, record["step"])

    def log_epoch(self, record: dict, warning: Optional[str]) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(f"epoch/{key}", value, record["step"])

    def close(self, ok: bool) -> None:
        if self.writer is None:
            return
        if ok:
            import numpy as np
            from PIL import Image

            for path in _pictures(self.out):
                with Image.open(path) as img:
                    self.writer.add_image(path.stem, np.asarray(img.convert("RGB")), dataformats="HWC")
        self.writer.close()


class WandB:
    """A Weights & Biases run in RUN/wandb/ (offline with WANDB_MODE=offline): scalars per step and
    epoch, the recipe as its config, curves.png and visual.png as images."""

    def __init__(self, out: Path, recipe: dict, project: str):
        self.out, self.recipe, self.project, self.run, self.started = out, recipe, project, None, None

    def start(self, run: RunStart) -> None:
        import wandb

        self.started = run
        self.run = wandb.init(project=self.project, name=self.out.name, dir=str(self.out), config=self.recipe,
                              reinit="finish_previous")

    def log_step(self, record: dict) -> None:
        if _due(self.started, record):
            self.run.log({f"train/{k}": v for k, v in _scalars(record).items()}, step=record["step"])

    def log_epoch(self, record: dict, warning: Optional[str]) -> None:
        self.run.log({f"epoch/{k}": v for k, v in _scalars(record).items()}, step=record["step"])

    def close(self, ok: bool) -> None:
        if self.run is None:
            return
        if ok:
            import wandb

            pictures = {path.stem: wandb.Image(str(path)) for path in _pictures(self.out)}
            if pictures:
                self.run.log(pictures)
        self.run.finish(exit_code=0 if ok else 1)


class MLflow:
    """An MLflow run (tracking URI `train.mlflow_uri`, default a `file:` store in RUN/mlruns):
    the recipe as parameters, scalars per step and epoch, the pictures as artifacts."""

    def __init__(self, out: Path, recipe: dict, project: str, uri: Optional[str]):
        self.out, self.recipe, self.project = out, recipe, project
        self.uri = uri or (self.out / "mlruns").resolve().as_uri()
        self.client, self.run_id, self.started = None, None, None

    def start(self, run: RunStart) -> None:
        import os

        if self.uri.startswith("file:"):
            # MLflow 3 keeps the file store in maintenance mode and refuses it unless allowed; it needs no
            # database packages, which is why a run folder uses it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.started = run
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.project)
        experiment = found.experiment_id if found else self.client.create_experiment(self.project)
        self.run_id = self.client.create_run(experiment, run_name=self.out.name).info.run_id
        from mlflow.entities import Param

        params = _flatten(self.recipe)
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            chunk = list(params.items())[i:i + 100]
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:500]) for k, v in chunk])

    def _log(self, prefix: str, record: dict) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{prefix}/{k}", v, now, record["step"]) for k, v in _scalars(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_step(self, record: dict) -> None:
        if _due(self.started, record):
            self._log("train", record)

    def log_epoch(self, record: dict, warning: Optional[str]) -> None:
        self._log("epoch", record)

    def close(self, ok: bool) -> None:
        if self.run_id is None:
            return
        if ok:
            for path in _pictures(self.out):
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


def trackers(names: list[str], out: Path, recipe: dict, project: str, mlflow_uri: Optional[str]) -> list:
    """The tracker loggers `train.loggers` names (jsonl, always on, is not among them)."""
    made = {"tensorboard": lambda: TensorBoard(out, recipe), "wandb": lambda: WandB(out, recipe, project),
            "mlflow": lambda: MLflow(out, recipe, project, mlflow_uri)}
    return [made[name]() for name in dict.fromkeys(names) if name in made]
