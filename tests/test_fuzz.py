"""The fuzzed command line: hypothesis writes recipe files (valid and broken YAML, wrong types,
out-of-range and non-finite numbers, unicode keys, huge lists), `--set` values and option
combinations for every command. Whatever comes in, the command must end with exit 0, 2, or 1 for
a run that diverged; print at most one `error:` line and no traceback; print one JSON object
under --json; and, when it refuses, leave the folder it ran in exactly as it was.

The keys and options come from the recipe schema and the CLI themselves, so a new key or option
is fuzzed without touching this file. Values that would be valid for the keys that set a run's
size (epochs, items, image and crop size, batch, widths, queues) are drawn small, so that an
accepted case trains or evaluates for real in a second or two; their invalid values and every
other key's values come from the whole range.

The suite runs a few derandomised examples per property; the soak draws 1,000 per property
(SSLCLI_FUZZ_EXAMPLES=N for another count) and prints how many ended with each exit code:
    pytest tests/test_fuzz.py --hypothesis-profile soak --hypothesis-show-statistics
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
import traceback
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given, strategies as st
from hypothesis.control import currently_in_test_context

from conftest import snapshot, write_images
from fuzz_values import (anything, as_set_text, broken_yaml, command_options, field_values, junk_key)
from sslcli.cli import main
from sslcli.recipe import SECTIONS
from sslcli.registry import all_methods

pytest.importorskip("av")
pytestmark = pytest.mark.slow

METHODS = sorted(all_methods())
SMALL = {"data": {"synthetic_train": 24, "synthetic_val": 8, "image_size": 32, "clip_frames": 6},
         "train": {"epochs": 1, "batch_size": 8}}
BASE = ["--set", "data.synthetic_train=24", "--set", "data.synthetic_val=8", "--set", "data.image_size=32",
        "--set", "data.clip_frames=6", "--batch-size", "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The files a case may name: labelled images, a flat folder, mp4 clips with sound, a
    finished image run and a finished audio-visual run; shared read-only by every case."""
    root = tmp_path_factory.mktemp("world")
    cache = os.environ.get("SSLCLI_CACHE")
    os.environ["SSLCLI_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    for split, n in (("train", 8), ("val", 4)):
        for cls, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            write_images(root / "labelled" / split / cls, n, size=(16, 16), colour=colour)
    write_images(root / "flat", 6, size=(16, 16))
    (root / "notes.txt").write_text("not data\n")
    places = {"LABELLED": root / "labelled", "FLAT": root / "flat", "TEXT": root / "notes.txt",
              "CLIPS": root / "clips", "RUN": root / "run", "AVRUN": root / "avrun", "IMAGE": root / "flat" / "000.png"}
    for args in (["write-clips", "synthetic:moving-shapes", "--out", places["CLIPS"], "--synthetic-train", "6",
                  "--synthetic-val", "4", "--image-size", "16"],
                 ["pretrain", "--method", "simclr", "--data", places["LABELLED"], "--out", places["RUN"], "--epochs", "1",
                  "--batch-size", "4"],
                 ["pretrain", "--method", "audio-visual", "--data", places["CLIPS"], "--out", places["AVRUN"], "--epochs",
                  "1", "--batch-size", "4", "--set", "method.fusion=distance", "--set", "data.clip_frames=4",
                  "--set", "method.val_pairs=8"]):
        code, _, err = invoke([str(a) for a in args])
        assert code == 0, err
    places["WEIGHTS"] = places["RUN"] / "backbone.safetensors"
    before = snapshot(root)
    yield {name: str(path) for name, path in places.items()}
    os.environ.pop("SSLCLI_CACHE") if cache is None else os.environ.update(SSLCLI_CACHE=cache)
    assert snapshot(root) == before, "a fuzz case changed the shared inputs"


def invoke(argv: list[str]) -> tuple[int, str, str]:
    """Run `sslcli ARGV` in this process: exit code, stdout, stderr. An exception that escapes
    is reported as exit code -1 with its traceback on stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - any escape is the failure this suite looks for
            code = -1
            err.write(traceback.format_exc())
    return code, out.getvalue(), err.getvalue()


def check(argv: list[str], files: dict[str, str] | None = None) -> tuple[int, str]:
    """Run one case in a fresh folder (holding `files`) and assert the command-line contract."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        here = os.getcwd()
        os.chdir(tmp)
        try:
            for name, text in (files or {}).items():
                Path(name).write_text(text, encoding="utf-8")
            before = snapshot(Path(tmp))
            code, out, err = invoke(argv)
            after = snapshot(Path(tmp))
        finally:
            os.chdir(here)
    if currently_in_test_context():
        event(f"exit {code}")
    case = f"sslcli {' '.join(map(repr, argv))}\nexit {code}\n{err[-3000:]}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code in (0, 1, 2), case
    assert "Traceback" not in err and "Traceback" not in out, case
    assert len(errors) <= 1, case
    if code != 0:
        assert len(errors) == 1, case
    if code == 2:
        assert after == before, f"a refused command created or changed files:\n{case}"
    if code == 0 and "--json" in argv and "--help" not in argv and "-h" not in argv:
        assert isinstance(json.loads(out), dict), case
    return code, errors[0] if errors else ""


# ---------------------------------------------------------------- recipes: --set and files

def schema(method: str) -> dict[str, typing.Any]:
    """'section.key' -> (type hint, field) for every recipe key of `method`."""
    keys = {}
    for section, cls in {"method": all_methods()[method].Config, **SECTIONS}.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name != "name":
                keys[f"{section}.{f.name}"] = (hints[f.name], f)
    return keys


@st.composite
def overrides(draw, method: str, count: int = 6) -> dict[str, typing.Any]:
    """Up to `count` recipe keys of `method` (some unknown) with values, valid or not."""
    keys = schema(method)
    chosen = draw(st.lists(st.sampled_from(sorted(keys)) | junk_key(), max_size=count, unique=True))
    return {key: draw(field_values(key, *keys[key]) if key in keys else anything()) for key in chosen}


@given(data=st.data())
def test_set_values(world, data):
    """`pretrain --method M --set key=value ...` with keys and values drawn from M's schema."""
    method = data.draw(st.sampled_from(METHODS), "method")
    source = data.draw(st.sampled_from(["synthetic:shapes", "synthetic:moving-shapes", world["LABELLED"], world["CLIPS"],
                                        world["FLAT"]]), "data")
    sets = data.draw(overrides(method), "overrides")
    argv = ["pretrain", "--method", method, "--data", source, "--out", "run", *BASE, "--json"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={as_set_text(value)}"]
    argv += data.draw(st.lists(st.sampled_from(["--set", "--set=", "--set=x", "--set=.=1", "--set=a.b.c=1",
                                                "--set=method.name=", "--force", "--resume"]), max_size=2), "tail")
    check(argv)


@given(data=st.data())
def test_recipe_files(world, data):
    """`pretrain --recipe FILE` with generated recipe files: whole, typed wrong, or broken YAML."""
    method = data.draw(st.sampled_from(METHODS) | st.sampled_from(METHODS) | st.text(max_size=12), "method")
    keys = overrides(method) if method in METHODS else st.dictionaries(junk_key(), anything(), max_size=4)
    raw: dict[str, typing.Any] = {"method": {"name": method}}
    for key, value in data.draw(keys, "keys").items():
        section, _, name = key.partition(".")
        node = raw.setdefault(section, {})
        if isinstance(node, dict):
            node[name] = value
    for section, keys in SMALL.items():  # an accepted recipe stays small unless the draw set the key
        if isinstance(raw.get(section, {}), dict):
            raw[section] = {**keys, **raw.get(section, {})}
    text = yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)
    text = data.draw(st.sampled_from([text]) | broken_yaml(text), "text")
    name = data.draw(st.sampled_from(["recipe.yaml", "recipe.yml", "r\u00e9cipe \u2603.yaml"]), "file")
    argv = ["pretrain", "--recipe", name, "--out", "run", "--json"]
    check(argv, files={name: text})


# ---------------------------------------------------------------- every command's options

@pytest.mark.parametrize("command", ["pretrain", "knn", "probe", "finetune", "visualize-neighbours", "write-clips",
                                     "methods", "recipes"])
@given(data=st.data())
def test_option_combinations(world, command, data):
    """Any subset of a command's options, each with a value drawn for its kind (valid, wrong type,
    out of range, missing), unknown options and repeats among them."""
    argv = [command]
    for option in command_options(command, data.draw, world):
        argv += option
    # Options a command cannot run cheaply without: synthetic sources and training length.
    if command == "pretrain" and "--method" not in argv and "--recipe" not in argv:
        argv[1:1] = ["--method", data.draw(st.sampled_from(METHODS), "method")]
    if command in ("pretrain", "finetune"):
        argv[1:1] = BASE if command == "pretrain" else ["--epochs", "1", "--batch-size", "4"]
    if command == "write-clips":
        argv[1:1] = ["--synthetic-train", "4", "--synthetic-val", "2", "--image-size", "16", "--out", "clips"]
    if command == "visualize-neighbours":
        argv[1:1] = ["--out", "grid.png"]
    if any(a.startswith("random:") for a in argv) and "--data" not in argv and "-d" not in argv:
        argv[1:1] = ["--data", world["LABELLED"]]  # not the 2,500 images of synthetic:shapes
    check(argv)


def test_the_fuzz_can_fail(monkeypatch):
    """The contract check is not vacuous: an escaped exception, a second error line and a refusal
    that leaves a file behind each fail it, while a clean refusal passes."""
    import sys

    def refuse(*lines: str, leave: bool = False):
        def fake(argv):
            if leave:
                Path("left.txt").write_text("x")
            for line in lines:
                print(line, file=sys.stderr)
            sys.exit(2)
        return fake

    monkeypatch.setattr(sys.modules[__name__], "main", refuse("error: one clean line"))
    assert check(["methods"]) == (2, "error: one clean line")
    for fault in (lambda argv: 1 / 0, refuse("error: one", "error: two"), refuse("error: refused", leave=True)):
        monkeypatch.setattr(sys.modules[__name__], "main", fault)
        with pytest.raises(AssertionError):
            check(["methods"])
