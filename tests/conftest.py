"""Shared helpers: run the CLI in-process and small, fast recipes on generated data."""

from __future__ import annotations

import json

import pytest

from sslcli.cli import main

# Small enough to train in seconds on 2 CPU cores.
TINY = [
    "--set", "data.synthetic_train=96", "--set", "data.synthetic_val=40", "--set", "data.image_size=32",
    "--set", "backbone.small_input=false", "--batch-size", "32",
]

# The learning checks run tens of one-step epochs: writing last.pt and the backbone after every
# one of them took about 40% of their time, so they checkpoint only at the end.
CHECKPOINT_AT_END = ["--set", "train.checkpoint_every=1000"]


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    """Run `sslcli ARGS...` in this process; returns exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def write_images(folder, n: int, size=(24, 24), colour=(200, 10, 10), seed: int = 0, fmt: str = "png") -> list:
    """`n` small noisy images of one dominant colour in `folder`."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:03d}.{fmt}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def write_bad_images(folder) -> dict:
    """Three files with image names that cannot be decoded: a corrupt JPEG (garbage after the
    header), a truncated JPEG and a text file named .jpg."""
    import io

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    files = {
        "corrupt": (folder / "corrupt.jpg", data[:20] + rng.integers(0, 255, len(data) - 20, dtype=np.uint8).tobytes()),
        "truncated": (folder / "truncated.jpg", data[: len(data) // 2]),
        "not_an_image": (folder / "notes.jpg", b"this is a text file with an image extension\n"),
    }
    for path, content in files.values():
        path.write_bytes(content)
    return {kind: path for kind, (path, _) in files.items()}


def pretrain_run(out, *args: str):
    """Run `sslcli pretrain ARGS --out OUT` in this process (for module fixtures) and return OUT."""
    with pytest.raises(SystemExit) as done:
        main(["pretrain", *map(str, args), "--out", str(out)])
    assert done.value.code == 0
    return out
