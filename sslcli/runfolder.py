"""The run folder as `pretrain` and `finetune` take it: the recipe a (resumed) run starts from,
and the checks that refuse a folder before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Optional

from .errors import UserError


def load_raw_recipe(method: Optional[str], recipe: Optional[str], out: Optional[Path], resume: bool) -> dict:
    """The recipe as YAML data, before overrides. A resumed run starts from its own recipe.yaml."""
    from .catalog import RECIPES_DIR, find_recipe
    from .recipe import read_yaml

    run_recipe = out / "recipe.yaml" if resume and out is not None else None
    if recipe:
        raw = read_yaml(find_recipe(recipe))
    elif run_recipe is not None and run_recipe.is_file():
        raw = read_yaml(run_recipe)
        named = (raw.get("method") or {}).get("name") if isinstance(raw.get("method"), dict) else None
        if method and named and method != named:
            raise UserError(f"--resume: the run in '{out}' trains '{named}', not '{method}'; drop --method, "
                            f"or start the new method in another --out")
    elif method:
        bundled = RECIPES_DIR / f"{method}.yaml"
        if bundled.is_file():
            raw = read_yaml(bundled)
        else:
            from .registry import get_method

            get_method(method)  # unknown names fail here with a did-you-mean
            raw = {"method": {"name": method}}
    else:
        raise UserError("say what to train: --method NAME (see `sslcli methods`) or --recipe FILE|NAME (see `sslcli recipes`)")
    raw.setdefault("method", {})
    if not isinstance(raw["method"], dict):
        raise UserError("recipe section 'method' must be a mapping with at least 'name'")
    if method:
        named = raw["method"].get("name")
        if recipe and named and named != method:
            raise UserError(f"--method {method} contradicts the recipe's method '{named}'; drop one of them")
        raw["method"]["name"] = method
    return raw


def holds_run(out: Path) -> bool:
    """Whether `out` holds a run that --resume can continue (its checkpoint or at least its recipe)."""
    return (out / "checkpoints" / "last.pt").is_file() or (out / "recipe.yaml").is_file()


def check_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse to mix runs (a non-empty folder needs --resume or --force) and unwritable folders,
    without creating or changing anything."""
    import tempfile

    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a folder path")
    if resume:
        if not holds_run(out):
            raise UserError(f"--resume: '{out}' holds no run to continue (no checkpoints/last.pt); run without --resume to start one")
    elif out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not force:
        raise UserError(f"--out '{out}' is not empty; pass --resume to continue that run or --force to replace it")
    existing = out.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.TemporaryFile(dir=existing):  # the one sure test, also for root and read-only mounts
            pass
    except OSError as exc:
        raise UserError(f"--out '{out}' is not writable ('{existing}': {exc.strerror or exc}); choose another folder") from None


RUN_FILES = ("checkpoints", "metrics.jsonl", "recipe.yaml", "backbone.safetensors", "backbone.json", "curves.png",
             "eval.json", "skipped.txt", "visual.png", "audio_backbone.safetensors", "audio_backbone.json")
LOCK_NAME = ".sslcli.lock"  # held by the one process writing the folder; says which process that is


def _hold(out: Path) -> IO[str]:
    """An exclusive OS lock on the run folder's lock file, or a one-line refusal naming the process
    that holds it. The kernel releases the lock when the holder exits, however it exits."""
    import fcntl
    import os
    import socket

    handle = open(out / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"--out '{out}' is being written by {holder}; wait for it to finish, or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def create_out(out: Path, force: bool, resume: bool = False) -> IO[str]:
    """Make the run folder and become its one writer; with --force, remove the files of the run it
    held. Returns the lock: keep it open while the run writes (a `with` block), since closing it
    lets another process in. The folder is checked again once held, for it may have changed while
    this process read its data."""
    import shutil

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out '{out}' cannot be created ({exc.strerror}); choose another folder") from None
    lock = _hold(out)
    try:
        check_out(out, resume, force)
    except UserError:
        lock.close()
        raise
    if force:
        for name in RUN_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    return lock
