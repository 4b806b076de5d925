"""Checkpoints: written atomically, read back safely, sized before a run, named in messages."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from ..backbones import save_backbone
from ..errors import UserError
from ..files import atomic_write, digest_matches, state_digest
from ..recipe import RESUMABLE_CHANGES, Recipe, resume_conflicts

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict, *paths: Path) -> None:
    """Write a checkpoint, with the digest of its contents inside it, atomically to each of `paths`
    (serialised and hashed once). Serialised in memory, then written with `atomic_write`: torch's
    own writer turns a full disk into an opaque RuntimeError, a plain write gives the OSError."""
    buffer = io.BytesIO()
    torch.save({**state, "digest": state_digest(state)}, buffer)
    for path in paths:
        atomic_write(path, buffer.getbuffer())


def _kept(folder: Path) -> list[Path]:
    """The epoch-N.pt checkpoints of `folder`, newest first."""
    def epoch(path: Path) -> int:
        number = path.stem.split("-", 1)[1]
        return int(number) if number.isdigit() else -1

    return sorted(folder.glob("epoch-*.pt"), key=epoch, reverse=True)


def prune_kept(folder: Path, keep_last: int) -> None:
    """Remove all but the newest `keep_last` epoch-N.pt (0: keep all); called once the newest is whole."""
    if keep_last:
        for old in _kept(folder)[keep_last:]:
            old.unlink(missing_ok=True)


def _older_whole(path: Path) -> str:
    """How to go on from a damaged checkpoint: the newest epoch-N.pt beside it, or a fresh start."""
    kept = [p for p in _kept(path.parent) if p != path]
    if kept:
        return f"resume from an older one with --resume-from {kept[0]}, or start again with --force"
    return "start again with --force"


def load_checkpoint(path: Path) -> dict:
    """A checkpoint, checked against the digest written inside it; a damaged one is refused in one
    line that offers the newest older checkpoint kept beside it (train.keep_every)."""
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at '{path}'; start without --resume (or with --force to overwrite)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise UserError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}): it is damaged or not an sslcli "
                        f"checkpoint; {_older_whole(path)}") from None
    if not digest_matches(state):
        raise UserError(f"checkpoint '{path}' is damaged: its contents do not match the digest written with it; "
                        f"{_older_whole(path)}")
    return state


def checkpoint_bytes(method: nn.Module, optimizer_name: str) -> int:
    """About how large checkpoints/last.pt plus backbone.safetensors will be."""
    state = sum(t.numel() * t.element_size() for t in method.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    backbone = sum(t.numel() * t.element_size() for t in method.backbone.state_dict().values())
    return state + (2 if optimizer_name == "adamw" else 1) * trained + backbone


def kept_message(ckpt_dir: Path) -> str:
    """Where the last good checkpoint is, for an error message."""
    last = ckpt_dir / "last.pt"
    if not last.is_file():
        return "no checkpoint had been written yet"
    try:
        epoch = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        where = f"epoch {epoch['epoch']}" + (f", step {epoch['step_in_epoch']}" if epoch["step_in_epoch"] else "")
    except Exception:  # naming the file is enough
        where = "the last save"
    return f"the last good checkpoint ({where}) is kept in {last}"


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def megabytes(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


def check_resumable(ckpt: dict, r: Recipe) -> None:
    """Refuse a checkpoint this version cannot read, of another method or backbone, or whose recipe
    departs from `r` in a key a resumed run may not change."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError("checkpoint format is not one this sslcli version reads; start a new run with --force")
    if ckpt.get("method") != r.method.name or ckpt.get("backbone") != r.backbone.name:
        raise UserError(
            f"checkpoint is from method '{ckpt.get('method')}' with backbone '{ckpt.get('backbone')}', but the recipe "
            f"asks for '{r.method.name}' with '{r.backbone.name}'; resume with the run's own recipe.yaml"
        )
    conflicts = resume_conflicts(ckpt.get("recipe") or {}, r)
    if conflicts:
        more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
        raise UserError(
            f"--resume: the recipe differs from the run's in {', '.join(conflicts[:3])}{more}; a resumed run may "
            f"only change {', '.join(sorted(RESUMABLE_CHANGES))}: drop the other changes or start a new run"
        )


def save_weights(method: nn.Module, info, epoch: int, out: Path) -> None:
    """backbone.safetensors/.json, and each further tower the method keeps (an audio tower) as
    <name>.safetensors/.json beside it."""
    save_backbone(method.backbone, replace(info, epoch=epoch), out)
    for stem, (tower, tower_info) in method.towers().items():
        save_backbone(tower, replace(tower_info, epoch=epoch, method=info.method), out, stem)

