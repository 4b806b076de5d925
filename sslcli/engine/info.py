"""`sslcli info RUN`: what a run folder holds, read without changing it: the method, backbone and
data, epochs done of planned, the last epoch's metrics, wall time, its files and their sizes, and
whether `--resume` can continue it (the checkpoint read and checked as a resume would)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..runfolder import LOCK_NAME


def _records(path: Path) -> tuple[list[dict], int]:
    """The epoch records of metrics.jsonl and the number of lines that could not be read."""
    epochs, unreadable = [], 0
    if not path.is_file():
        return epochs, unreadable
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            unreadable += 1  # a run killed mid-line leaves a partial last line
            continue
        if isinstance(record, dict) and "epoch_seconds" in record:
            epochs.append(record)
    return epochs, unreadable


def _files(run: Path) -> list[dict]:
    found = []
    for path in sorted(run.rglob("*")):
        if path.is_file() and path.name != LOCK_NAME and not path.name.endswith(".tmp"):
            found.append({"path": str(path.relative_to(run)), "bytes": path.stat().st_size})
    return found


def _writer(run: Path) -> str | None:
    """The process writing the run now, or None (the lock is free, or there is none)."""
    import fcntl

    lock = run / LOCK_NAME
    if not lock.is_file():
        return None
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def run_info(run: Path) -> dict:
    """The --json result of `sslcli info RUN`."""
    from ..recipe import read_yaml

    if not run.is_dir():
        raise UserError(f"'{run}' is not a folder; give a run folder written by `sslcli pretrain` or `finetune`")
    if not (run / "recipe.yaml").is_file():
        raise UserError(f"'{run}' holds no recipe.yaml, so it is not a run folder (or its run was refused before "
                        f"it started)")
    recipe = read_yaml(run / "recipe.yaml")
    train = recipe.get("train") or {}
    epochs, unreadable = _records(run / "metrics.jsonl")
    planned = int(train.get("epochs", 0))
    done = int(epochs[-1]["epoch"]) if epochs else 0
    result = {
        "run": str(run),
        "method": (recipe.get("method") or {}).get("name"),
        "backbone": (recipe.get("backbone") or {}).get("name"),
        "data": (recipe.get("data") or {}).get("source"),
        "epochs_done": done,
        "epochs_planned": planned,
        "finished": bool(planned) and done >= planned,
        "steps": int(epochs[-1]["step"]) if epochs else 0,
        "wall_seconds": round(sum(float(e.get("epoch_seconds", 0)) for e in epochs), 1),
        "last_epoch": epochs[-1] if epochs else None,
        "writer": _writer(run),
        "files": _files(run),
        **({"unreadable_metrics_lines": unreadable} if unreadable else {}),
    }
    result.update(_resume_state(run, recipe, done, planned))
    return result


def _resume_state(run: Path, raw: dict, done: int, planned: int) -> dict:
    """Whether `--resume` would continue the run, and why not when it would not."""
    from ..recipe import resolve_recipe
    from ..registry import get_method
    from .checkpoints import check_resumable, load_checkpoint

    last = run / "checkpoints" / "last.pt"
    if not last.is_file():
        return {"can_resume": False, "resume": "no checkpoints/last.pt: the run stopped before its first checkpoint"}
    try:
        ckpt = load_checkpoint(last)
        check_resumable(ckpt, resolve_recipe(raw, lambda name: get_method(name).Config))
    except UserError as exc:
        return {"can_resume": False, "resume": str(exc)}
    where = {"checkpoint_epoch": int(ckpt["epoch"]), "checkpoint_step": int(ckpt["global_step"])}
    if ckpt["epoch"] >= planned and not ckpt["step_in_epoch"]:
        return {"can_resume": False, "resume": f"finished: all {planned} epochs are trained; --resume with "
                                               f"--epochs N (more than {planned}) trains on", **where}
    return {"can_resume": True, "resume": f"--resume continues from epoch {ckpt['epoch']}, step {ckpt['global_step']}",
            **where}
