"""Where a run's numbers go: one `Logger` protocol, and the loggers every run has (metrics.jsonl,
the progress bar with its epoch lines, curves.png). The trainer hands every logger the same
records and knows none of them; a new destination (TensorBoard, W&B) is one more class."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from rich.console import Console


@dataclass(frozen=True)
class RunStart:
    """What a logger learns when training starts (or resumes)."""

    name: str  # the method
    total_steps: int
    done_steps: int  # steps already trained by the run resumed
    epochs: int
    log_every: int


class Logger(Protocol):
    """Receives a run's records. A step record has step, epoch (fractional), loss, lr,
    images_per_s and the method's metrics; an epoch record has epoch, step, the epoch means,
    lr, images_per_s, epoch_seconds and the epoch metrics. `close` is called however the run
    ends (`ok` false when it failed or was interrupted), and must not raise for a run that failed."""

    def start(self, run: RunStart) -> None: ...

    def log_step(self, record: dict) -> None: ...

    def log_epoch(self, record: dict, warning: Optional[str]) -> None: ...

    def close(self, ok: bool) -> None: ...


class MetricsFile:
    """metrics.jsonl: a step record every `log_every` steps and every epoch record, one JSON
    object a line, flushed as written so a killed run keeps what it logged."""

    def __init__(self, out: Path):
        self.path = out / "metrics.jsonl"
        self.every = 1
        self.file = None

    def start(self, run: RunStart) -> None:
        self.every = run.log_every
        self.file = open(self.path, "a")

    def _write(self, record: dict) -> None:
        self.file.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}) + "\n")
        self.file.flush()

    def log_step(self, record: dict) -> None:
        if record["step"] % self.every == 0:
            self._write(record)

    def log_epoch(self, record: dict, warning: Optional[str]) -> None:
        self._write(record)

    def close(self, ok: bool) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # a full disk: the run already reports the failed write
                pass


class ProgressBar:
    """The live bar (loss, lr, images/s, eta) and one line per epoch with its warning, on the console."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = None
        self.task = None

    def start(self, run: RunStart) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.4f}  {task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.task = self.progress.add_task(run.name, total=run.total_steps, completed=run.done_steps,
                                           loss=float("nan"), lr=0.0, ips=0.0)
        self.epochs = run.epochs
        self.progress.start()

    def log_step(self, record: dict) -> None:
        self.progress.update(self.task, advance=1, loss=record["loss"], lr=record["lr"], ips=record["images_per_s"])

    def log_epoch(self, record: dict, warning: Optional[str]) -> None:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "epoch"))
        self.progress.console.print(f"epoch {record['epoch']}/{self.epochs}  {shown}", soft_wrap=True)
        if warning:
            self.progress.console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)

    def close(self, ok: bool) -> None:
        if self.progress is not None:
            self.progress.stop()


class Curves:
    """curves.png, drawn from metrics.jsonl when the run ends (also when it failed: the curves of a
    diverged run are what one looks at first)."""

    def __init__(self, out: Path, console: Console):
        self.out = out
        self.console = console

    def start(self, run: RunStart) -> None:
        pass

    def log_step(self, record: dict) -> None:
        pass

    def log_epoch(self, record: dict, warning: Optional[str]) -> None:
        pass

    def close(self, ok: bool) -> None:
        from ..plots import plot_curves

        try:
            plot_curves(self.out)
        except Exception as exc:  # a plot must never cost a run
            self.console.print(f"[yellow]warning: curves.png not written ({exc})[/yellow]")


def run_loggers(out: Path, console: Console, main: bool, recipe=None) -> list[Logger]:
    """The loggers of a run: rank 0 writes the files and feeds the trackers `train.loggers` names
    (after Curves, so curves.png exists when they close); every rank has the bar (silent off rank 0)."""
    if not main:
        return [ProgressBar(console)]
    loggers: list[Logger] = [MetricsFile(out), ProgressBar(console), Curves(out, console)]
    if recipe is not None and set(recipe.train.loggers) - {"jsonl"}:
        from .tracking import trackers

        t = recipe.train
        loggers += trackers(t.loggers, out, recipe.to_dict(), t.project, t.mlflow_uri)
    return loggers
