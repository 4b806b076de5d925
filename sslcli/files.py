"""Writing files so that a crash, a kill or a full disk never leaves a half-written one."""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def cache_dir(*parts: str) -> Path:
    """sslcli's cache folder (`$SSLCLI_CACHE`, else ~/.cache/sslcli), or a folder inside it."""
    base = Path(os.environ.get("SSLCLI_CACHE", Path.home() / ".cache" / "sslcli")).expanduser()
    return base.joinpath(*parts)


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write to PATH.tmp, fsync, then rename over `path`: the previous file stays intact until the
    new one is complete. On failure (a full disk) the partial temporary file is removed and the
    OSError is raised."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_tmp(folder: Path) -> None:
    """Remove temporary files a killed process left behind in `folder`."""
    if folder.is_dir():
        for leftover in folder.glob(f"*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def state_digest(state) -> str:
    """sha256 over a checkpoint's contents: tensors by dtype, shape and bytes, other values by repr,
    dict keys in sorted order, so the same contents give the same digest after a save and load."""
    import hashlib

    import torch

    digest = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, dict):
            digest.update(b"{%d" % len(value))
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(b"[%d" % len(value))
            for item in value:
                feed(item)
        elif isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, not a copy
        else:
            digest.update(repr(value).encode())

    feed(state)
    return digest.hexdigest()


def digest_matches(state) -> bool:
    """Take the digest out of a loaded checkpoint; False when its contents do not match it (a
    checkpoint written before digests passes)."""
    written = state.pop("digest", None) if isinstance(state, dict) else None
    return written is None or state_digest(state) == written
