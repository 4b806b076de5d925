"""Hypothesis strategies for test_fuzz.py: values of every kind, recipe values drawn from a key's
own type and bounds, broken YAML, and option values for every command's options."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, Union

import yaml
from hypothesis import strategies as st

# Largest valid value drawn for the keys that set how much work an accepted case does.
COST_CAPS = {
    "train.epochs": 2, "train.batch_size": 16, "data.synthetic_train": 32, "data.synthetic_val": 8,
    "data.image_size": 40, "augment.crop_size": 40, "data.clip_frames": 12, "data.eval_frames": 4,
    "data.fps": 12.0, "data.max_clip_seconds": 30.0, "data.workers": 1, "method.seconds": 2.0,
    "method.sample_rate": 16000, "method.val_pairs": 32, "method.val_tuples": 32, "method.prior_samples": 64,
    "method.small_crops": 2, "method.sinkhorn_iterations": 5, "method.small_crop_size": 24,
}
# Widths, queues and counts: valid values at most this large (memory and time, not correctness).
SIZE_CAP = 64
SIZE_WORDS = ("dim", "queue", "prototypes", "negatives", "width", "depth", "stages", "layers", "permutations", "blocks",
              "n_fft", "window", "hop", "n_mels", "neighbours")

NASTY_TEXT = ["", " ", "auto", "~", "null", "yes", "no", "on", "0x1f", "1_000", "1e-4", "1e999", "-1e999", ".nan",
              ".inf", "-.inf", "NaN", "[1, 2]", "{a: 1}", "[", "{", "'", '"', ":", "- x", "&a", "*a", "!!python/name:os.system",
              "%TAG", "\x00", "\u2603", "\U0001f600", "../../etc/passwd", "a" * 300, "\n", "\t", "--help", "-h"]
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1.0, 0.5])
INTS = st.integers(-(2**70), 2**70) | st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 2**64])


def scalars() -> st.SearchStrategy:
    return st.one_of(INTS, FLOATS, st.booleans(), st.none(), st.text(max_size=20), st.sampled_from(NASTY_TEXT))


def anything() -> st.SearchStrategy:
    """Any YAML value: scalars, nested lists and mappings (unicode keys), and huge lists."""
    nested = st.recursive(scalars(), lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
    huge = st.tuples(st.sampled_from([1000, 100_000]), scalars()).map(lambda nv: [nv[1]] * nv[0])
    return nested | huge


def junk_key() -> st.SearchStrategy:
    """A `section.key` that the schema does not have (or almost has)."""
    sections = st.sampled_from(["method", "backbone", "data", "augment", "optim", "train", "trian", "", "\u00e9t\u00e9"])
    return st.tuples(sections, st.text(min_size=0, max_size=10)).map(lambda p: f"{p[0]}.{p[1]}")


def _cost_cap(key: str) -> Any:
    """The largest valid value drawn for `key`, or None for keys that cost nothing to raise."""
    return COST_CAPS.get(key, SIZE_CAP if any(w in key for w in SIZE_WORDS) else None)


def _valid(key: str, tp: Any, meta: dict) -> st.SearchStrategy:
    """Values of type `tp` within the field's bounds (and the cost caps)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return st.one_of(*[_valid(key, arg, meta) for arg in typing.get_args(tp)])
    if origin is list:
        return st.lists(_valid(key, typing.get_args(tp)[0], meta), min_size=0, max_size=3)
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    low, high = meta.get("min"), meta.get("max")
    cap = _cost_cap(key)
    if tp is int:
        low = -(2**40) if low is None else math.ceil(low)
        high = min(h for h in (high, cap, 2**40) if h is not None)
        return st.integers(low, max(low, int(high)))
    if tp is float:
        high = min(h for h in (high, cap, 1e6) if h is not None)
        return st.floats(low if low is not None else -1e6, high, allow_nan=False)
    if tp is str:
        names = {"backbone.name": ["resnet18", "resnet34", "resnt18", "vit_tiny_patch16_224", "efficientnet_b0", ""],
                 "data.source": ["synthetic:shapes", "synthetic:moving-shapes", "synthetic:blobs", "cifar11", "nowhere/"],
                 "backbone.weights": ["nowhere.safetensors", "", "runs"]}
        return st.sampled_from(names.get(key, ["", "x"])) | st.text(max_size=12)
    if tp is dict:
        return st.dictionaries(st.text(max_size=5), scalars(), max_size=2)
    raise TypeError(f"no strategy for {tp}")


def field_values(key: str, tp: Any, field: Any) -> st.SearchStrategy:
    """Mostly valid values of a recipe key, else anything at all (wrong types, out of range)."""
    if key in ("data.source", "data.root", "backbone.weights"):  # no downloads, no paths outside the case
        tp = str
    valid = _valid(key, tp, dict(field.metadata))
    cap = _cost_cap(key)
    high = min(field.metadata.get("max", 2**40), 2**40)  # sizes beyond 2**40 fail to allocate at once: kept
    junk = anything() if cap is None else anything().filter(lambda v: not _costly(v, cap, high))
    return st.one_of(valid, valid, valid, junk)


def _costly(value: Any, cap: float, high: float) -> bool:
    """A number above the cost cap that the schema would still accept (up to `high`), so the case
    would run long instead of being refused or failing at once."""
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except (ValueError, OverflowError):
        return False
    return number is not None and math.isfinite(number) and cap < number <= high


def as_set_text(value: Any) -> str:
    """How a user would type `value` after `--set key=`."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True).strip()
    return text.removesuffix("...").strip()


@st.composite
def broken_yaml(draw, text: str) -> str:
    """`text` cut short, with a character put in, or with a line from elsewhere."""
    cut = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["truncate", "insert", "line", "bytes"]))
    if how == "truncate":
        return text[:cut]
    if how == "insert":
        return text[:cut] + draw(st.sampled_from(list("[]{}:-&*!|>'\"%@`#,\t\n") + ["\ufeff", "\u2028"])) + text[cut:]
    if how == "line":
        return text[:cut] + "\n" + draw(st.sampled_from(NASTY_TEXT)) + "\n" + text[cut:]
    return draw(st.text(max_size=200))


# ---------------------------------------------------------------- command options

def _models(world: dict) -> list[str]:
    return ["random:resnet18", world["RUN"], world["AVRUN"], world["WEIGHTS"], world["LABELLED"], world["TEXT"],
            "random:", "random:resnt18", "no-such-run", "random:\u2603"]


COST_OPTIONS = {"--epochs", "--queries", "--max", "--synthetic-train", "--synthetic-val", "--frames", "--image-size",
                "--fps", "--k"}


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def option_values(name: str, world: dict) -> st.SearchStrategy:
    """Values for option `name` (or argument): valid ones that run cheaply, and wrong ones."""
    junk = st.sampled_from(NASTY_TEXT) | st.text(max_size=10) | INTS.map(str) | FLOATS.map(str)
    small = st.integers(1, 4).map(str)
    data = [world["LABELLED"], world["CLIPS"], world["FLAT"], world["TEXT"], "no-such-folder", "synthetic:blobs"]
    pools = {
        "model": _models(world), "--data": data, "--data-root": [world["LABELLED"], "no-such-folder"],
        "--frames": st.integers(1, 4).map(str), "--tower": ["vision", "audio", "smell"],
        "--query-tower": ["audio", "vision"], "--k": ["1", "3", "1,3", "0", "-1", "many", "1,,2", "999"],
        "--layer": ["last", "stem", "layer1", "layer4", "layer9"],
        "--layers": ["last", "all", "stem,layer1", "layer9", ",", "last,last"],
        "--epochs": small, "--queries": small, "--max": small, "--synthetic-train": small, "--synthetic-val": small,
        "--batch-size": st.integers(1, 64).map(str), "--image-size": st.integers(8, 32).map(str),
        "--fps": st.floats(0.1, 12).map(str), "--device": ["auto", "cpu", "cuda", "tpu"],
        "--method": ["simclr", "rotation", "audio-visual", "shuffle-and-learn", "simclrr"],
        "--recipe": ["finetune", "simclr", "nope", "nope.yaml", world["TEXT"]],
        "--backbone": ["resnet18", "resnt18", "vit_tiny_patch16_224"],
        "--out": ["out", "out.png", "out.jpg", "deep/er/out.png", world["TEXT"], "/proc/fuzz/out"],
        "--plot": ["p.png", "p.jpg", "no/such/dir/p.png"], "--query": [world["IMAGE"], world["TEXT"], "missing.png"],
        "--set": ["train.epochs=1", "optim.lr=.nan", "optim.lrr=1", "x", "data.fraction=0.5"],
        "--resume-from": ["missing.pt", world["TEXT"]],
        "data": ["synthetic:moving-shapes", world["CLIPS"], world["LABELLED"], "synthetic:shapes", "nowhere"],
    }
    if name in COST_OPTIONS:  # their wrong values only: a valid large one would train for minutes
        junk = st.sampled_from([t for t in NASTY_TEXT if not _positive(t)]) | st.integers(max_value=0).map(str) \
            | st.text(alphabet="abc-.,e ", max_size=6)
    valid = pools.get(name)
    if valid is None:  # numbers without a cost: temperature, lr, weight decay, fraction, seed
        valid = FLOATS.map(str) | INTS.map(str)
    elif isinstance(valid, list):
        valid = st.sampled_from(valid)
    return valid | valid | junk


def command_options(command: str, draw, world: dict) -> list[list[str]]:
    """A random subset of `command`'s options as argv pieces, with its arguments, repeats, an
    unknown option, and sometimes an option whose value is missing."""
    import typer.main

    from sslcli.cli import app

    params = typer.main.get_command(app).commands[command].params
    pieces: list[list[str]] = []
    for param in params:
        if param.param_type_name == "argument":
            if draw(st.integers(0, 9), f"{param.name}?"):  # mostly present
                pieces.append([draw(option_values(param.name, world), param.name)])
    options = [p for p in params if p.param_type_name == "option"]
    for param in draw(st.lists(st.sampled_from(options), max_size=5), f"{command} options") if options else []:
        flag = param.opts[0]
        pieces.append([flag] if param.is_flag else [flag, draw(option_values(flag, world), flag)])
    extra = draw(st.sampled_from([None, None, None, ["--bogus"], ["--json", "--json"], ["-h"], ["--"], ["extra"]]), "extra")
    if extra:
        pieces.insert(draw(st.integers(0, len(pieces)), "where"), extra)
    if options and draw(st.integers(0, 9), "dangling") == 0:
        pieces.append([draw(st.sampled_from([o.opts[0] for o in options if not o.is_flag] or ["--json"]), "last")])
    return pieces
