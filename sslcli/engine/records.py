"""What a training run writes besides checkpoints and its logs: skipped.txt, the trimmed
metrics.jsonl of a resumed run, and the method's visual.png."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console

from ..data.damaged import BadImages
from ..data.sources import DataSource
from ..files import atomic_write
from ..methods.base import Method


def write_skipped(out: Path, bad: Optional[BadImages]) -> None:
    """skipped.txt: one 'path<TAB>reason' line per item that could not be used."""
    if bad is not None and len(bad):
        atomic_write(out / "skipped.txt", bad.lines().encode())


def trim_metrics(out: Path, global_step: int) -> None:
    """Drop records written after the checkpoint we resume from, so none appears twice."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if line.strip() and json.loads(line).get("step", 0) <= global_step:
                kept.append(line)
        except ValueError:  # a line cut short by a kill
            continue
    atomic_write(path, "".join(line + "\n" for line in kept).encode())


def visualize(method: Method, ds: DataSource, device: torch.device, out: Path, console: Console, count: int = 8) -> None:
    """visual.png: the method's own picture (e.g. colourised or inpainted val images)."""
    split = ds.val if ds.val is not None and len(ds.val) else ds.train
    pick = torch.linspace(0, len(split) - 1, min(count, len(split))).long()
    try:
        images = torch.stack([image for image in split.stills(pick.tolist()) if image is not None])
        method.eval()
        with torch.no_grad():
            picture = method.visualize(images.to(device))
        if picture is not None:
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            atomic_write(out / "visual.png", buffer.getvalue())
    except Exception as exc:  # a picture must never cost a run
        console.print(f"[yellow]warning: visual.png not written ({exc})[/yellow]")
    finally:
        method.train()
