"""Shared helpers: run the CLI in-process and small, fast recipes on generated data."""

from __future__ import annotations

import hashlib
import os
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sslcli.cli import main

# The fuzz suite (test_fuzz.py): a few derandomised examples per property in the suite, so CI
# is repeatable; `pytest tests/test_fuzz.py --hypothesis-profile soak` draws thousands at random.
_FUZZ = dict(deadline=None, database=None, print_blob=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                    HealthCheck.function_scoped_fixture])
settings.register_profile("suite", max_examples=5, derandomize=True, **_FUZZ)
settings.register_profile("soak", max_examples=int(os.environ.get("SSLCLI_FUZZ_EXAMPLES", "1000")), **_FUZZ)
settings.load_profile("suite")

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


PATTERNS = ("hstripes", "vstripes", "checker", "dots", "rings")


def write_patterns(root, n_train: int = 64, n_val: int = 24, size: int = 32, seed: int = 0):
    """A labelled train/ and val/ folder of five texture classes (horizontal and vertical stripes,
    checkers, dots, rings), each image in two random colours with a random period and phase plus
    noise. Colour dominates a random network's features and says nothing of the class, so a
    method that learns colour-invariant features lifts kNN well above its start within seconds."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(float)
    for split, n in (("train", n_train), ("val", n_val)):
        for kind in PATTERNS:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                period, phase = rng.uniform(5, 9), rng.uniform(0, 9)
                if kind == "hstripes":
                    mask = (y + phase) % period < period / 2
                elif kind == "vstripes":
                    mask = (x + phase) % period < period / 2
                elif kind == "checker":
                    mask = ((x + phase) // (period / 2) + (y + phase) // (period / 2)) % 2 == 0
                elif kind == "dots":
                    mask = ((x + phase) % period - period / 2) ** 2 + ((y + phase) % period - period / 2) ** 2 \
                        < (period / 3.2) ** 2
                else:
                    cy, cx = rng.uniform(size / 4, 3 * size / 4, 2)
                    mask = (np.hypot(x - cx, y - cy) + phase) % period < period / 2
                fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
                pixels = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, (size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its size, mtime and content hash."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            state[str(path.relative_to(root))] = (path.stat().st_size, path.stat().st_mtime_ns,
                                                  hashlib.sha1(path.read_bytes()).hexdigest())
        elif path.is_dir():
            try:
                state[str(path.relative_to(root)) + "/"] = (path.stat().st_mtime_ns,)
            except PermissionError:
                pass
    return state


def main_json(*args) -> dict:
    """Run `sslcli ARGS... --json` in this process (for module fixtures) and return its JSON."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    assert done.value.code == 0
    return json.loads(out.getvalue())
