"""Recipes: a strict, typed description of a run, loaded from YAML with `--set` overrides.

Every section is a dataclass with defaults. Unknown keys are refused with a did-you-mean,
values of the wrong type are refused naming the key and the type expected, and the resolved
recipe is written back as YAML that reproduces the run with `--recipe`.
This module does not import torch, so recipe errors are reported instantly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union

import yaml

from .errors import UserError, did_you_mean
from .schema import build_section





def option(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with a default, a help line and optional bounds (`min`, `max`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class MethodConfig:
    """Keys every method shares; each method plugin subclasses this with its own keys."""

    name: str = option("", "method plugin name (see `sslcli methods`)")

    def validate(self) -> None:
        """Checks across keys, run when the recipe is resolved; raise UserError naming the fix."""


@dataclass
class BackboneConfig:
    name: str = option("resnet18", "any timm model name")
    small_input: Union[bool, Literal["auto"]] = option(
        "auto",
        "3x3 stride-1 first conv and no max-pool; auto: on for inputs of 32 px and less",
    )
    weights: Union[str, None] = option(None, "start from these weights: a run folder or a backbone.safetensors file")
    zero_init_last: bool = option(
        True, "start each residual block's last BatchNorm at zero (timm's default); false: torchvision's initialisation"
    )


@dataclass
class DataConfig:
    source: Union[str, None] = option(
        "synthetic:shapes", "synthetic:shapes, synthetic:moving-shapes, an image or video folder, cifar10, cifar100 or "
                            "stl10; null: none named, so --data must say (recipes for data of the user's own)")
    kind: Literal["auto", "images", "video"] = option(
        "auto", "what a folder holds; auto: clips when it holds video files (video: folders of frames are clips too)")
    image_size: Union[int, Literal["auto"]] = option(
        "auto", "side of the square images the network sees; auto: the source's own size", min=8
    )
    root: Union[str, None] = option(None, "where torchvision datasets live (cifar10, cifar100, stl10)")
    workers: Union[int, Literal["auto"]] = option("auto", "data loading processes; auto: 0 when in memory", min=0, max=256)
    cache_max_gb: float = option(4.0, "decode the dataset once into memory when it takes less than this", min=0)
    fraction: float = option(1.0, "train on this class-balanced fraction of the training split (labelled data)", min=1e-6, max=1)
    synthetic_train: Union[int, Literal["auto"]] = option(
        "auto", "synthetic sources: training items to generate; auto: 2000 images or 400 clips", min=1, max=1_000_000)
    synthetic_val: Union[int, Literal["auto"]] = option(
        "auto", "synthetic sources: validation items to generate; auto: 500 images or 100 clips", min=1, max=1_000_000)
    fps: float = option(8.0, "clips: frames per second decoded", min=0.1, max=240)
    clip_frames: int = option(16, "clips: consecutive frames per training item (a window at a random start "
                                  "each epoch); shorter clips are skipped", min=1)
    max_clip_seconds: float = option(30.0, "clips: only the first this many seconds of a clip are used", min=0.1,
                                    max=86_400)
    eval_frames: int = option(8, "clips: evenly spaced frames whose features are averaged in evaluation", min=1)
    max_bad_fraction: float = option(
        0.01, "undecodable images are skipped and listed in skipped.txt; more than this fraction stops the run",
        min=0, max=1,
    )


@dataclass
class AugmentConfig:
    crop_size: Union[int, Literal["auto"]] = option(
        "auto", "side of the training views; auto: data.image_size (smaller views train faster)", min=8
    )
    crop_scale: list[float] = option([0.2, 1.0], "random resized crop area range, fractions of the image")
    crop_ratio: list[float] = option([0.75, 1.3333333], "random resized crop aspect ratio range")
    flip: float = option(0.5, "probability of a horizontal flip", min=0, max=1)
    color_jitter: float = option(0.4, "colour jitter strength s (brightness, contrast, saturation 0.8s, hue 0.2s)", min=0)
    color_jitter_prob: float = option(0.8, "probability of colour jitter", min=0, max=1)
    grayscale: float = option(0.2, "probability of converting to grayscale", min=0, max=1)
    blur: Union[float, list[float]] = option(
        0.0, "probability of a Gaussian blur; a pair [first, second] sets it per view of two-view methods "
             "(BYOL's asymmetric views: [1.0, 0.1]); single-view methods use the first", min=0, max=1)
    blur_sigma: list[float] = option([0.1, 2.0], "Gaussian blur sigma range, in pixels at 224 px (scaled)")
    time_window: float = option(
        0.0, "clips, two-view methods: the second view comes from another frame of the clip at most this many "
             "seconds from the first (time-contrastive views); 0: both views from one frame", min=0)
    solarize: Union[float, list[float]] = option(
        0.0, "probability of solarising (inverting every value above one half); a pair [first, second] sets it "
             "per view, as blur (BYOL: [0.0, 0.2])", min=0, max=1)


@dataclass
class OptimConfig:
    name: Literal["sgd", "lars", "adamw"] = option("sgd", "optimiser")
    lr: float = option(0.3, "base learning rate (scaled by lr_scaling)", min=0)
    lr_scaling: Literal["linear", "sqrt", "none"] = option(
        "linear", "linear: lr*batch/256; sqrt: lr*sqrt(batch/256); none: lr as given"
    )
    momentum: float = option(0.9, "SGD/LARS momentum, AdamW beta1", min=0, max=1)
    trust: float = option(
        0.001, "LARS trust coefficient: each weight's step is lr*trust of its norm (ImageNet papers' 0.001 "
               "assumes their large batches and long schedules)", min=0)
    weight_decay: float = option(1.0e-4, "weight decay (not applied to biases and norm layers)", min=0)
    warmup_epochs: float = option(2.0, "linear warmup from 0, in epochs", min=0)
    schedule: Literal["cosine", "constant"] = option("cosine", "learning rate schedule after warmup")
    final_lr_fraction: float = option(0.0, "cosine ends at lr times this", min=0, max=1)


@dataclass
class TrainConfig:
    epochs: int = option(30, "passes over the training data", min=1, max=100_000)
    batch_size: int = option(128, "images per step", min=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "auto: bf16 on a CPU with bf16 instructions (else fp32), bf16 (or fp16 AMP) on CUDA"
    )
    seed: int = option(0, "seed for weights, data order and augmentation")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto: cuda when available")
    checkpoint_every: int = option(1, "epochs between checkpoints/last.pt writes", min=1)
    keep_every: int = option(0, "also keep checkpoints/epoch-N.pt every N epochs (0: never)", min=0)
    keep_last: int = option(0, "keep only the newest N epoch-N.pt, removing the oldest once the new one is whole "
                               "(0: keep all)", min=0)
    log_every: int = option(20, "steps between metrics.jsonl step records", min=1)
    channels_last: bool = option(True, "NHWC memory format (faster convolutions on CPU and GPU)")
    sync_batchnorm: bool = option(False, "under torchrun on GPUs: every BatchNorm (backbone, heads, momentum copies) "
                                         "normalises over the global batch; needs CUDA")
    loggers: list[Literal["jsonl", "tensorboard", "wandb", "mlflow"]] = option(
        ["jsonl"], "where metrics go besides metrics.jsonl (always written): tensorboard, wandb, mlflow (each an extra)")
    project: str = option("sslcli", "the W&B project and the MLflow experiment a run logs to")
    mlflow_uri: Union[str, None] = option(None, "MLflow tracking URI; null: a file store in RUN/mlruns")


SECTIONS: dict[str, type] = {
    "backbone": BackboneConfig,
    "data": DataConfig,
    "augment": AugmentConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


@dataclass
class Recipe:
    method: MethodConfig
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in ("method", *SECTIONS)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# Keys a resumed run may change: they extend the run or move it, never alter what it learns.
RESUMABLE_CHANGES = frozenset({
    "train.epochs", "train.device", "train.checkpoint_every", "train.keep_every", "train.keep_last", "train.log_every",
    "train.loggers", "train.project", "train.mlflow_uri",
    "data.workers", "data.cache_max_gb", "data.root", "data.max_bad_fraction", "data.eval_frames",
})


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_conflicts(saved: dict, recipe: Recipe) -> list[str]:
    """'key (run X, now Y)' for each key where `recipe` departs from the run's `saved` recipe in a
    way a resumed run cannot take. A key the saved recipe lacks came with a later sslcli version
    whose default keeps the old behaviour, so the run had that default."""
    now = flatten(recipe.to_dict())
    defaults = {s: dataclasses.asdict(type(getattr(recipe, s))()) for s in ("method", *SECTIONS)}
    before = {**flatten(defaults), **flatten(saved)}
    return [f"{key} (run {before.get(key)!r}, now {now.get(key)!r})" for key in sorted(set(before) | set(now))
            if key not in RESUMABLE_CHANGES and before.get(key) != now.get(key)]


# ---------------------------------------------------------------- loading

def parse_set(item: str) -> tuple[list[str], Any]:
    """`a.b=value` as (['a', 'b'], value), the value read as a YAML scalar."""
    if "=" not in item:
        raise UserError(f"--set '{item}' has no '='; write it as --set section.key=value, e.g. --set train.epochs=5")
    key, _, text = item.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if len(path) != 2:
        raise UserError(f"--set '{item}': the key must be section.key, e.g. optim.lr, got '{key}'")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return path, value


def apply_overrides(raw: dict, overrides: list[tuple[list[str], Any]]) -> dict:
    for (section, key), value in overrides:
        known = ("method", *SECTIONS)
        if section not in known:
            raise UserError(f"unknown recipe section '{section}'{did_you_mean(section, known)}; sections: {', '.join(known)}")
        node = raw.setdefault(section, {})
        if not isinstance(node, dict):
            raise UserError(f"recipe section '{section}' must be a mapping")
        node[key] = value
    return raw


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"YAML syntax error in '{path}'{where}: {problem}; fix the file and rerun") from None
    except OSError as exc:
        raise UserError(f"cannot read recipe '{path}': {exc.strerror}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"recipe '{path}' must be a mapping with sections method, backbone, data, augment, optim, train")
    return raw


def resolve_recipe(
    raw: dict,
    method_config: Callable[[str], type],
) -> Recipe:
    """Validate a raw nested dict into a Recipe; `method_config(name)` gives a method's dataclass."""
    known = ("method", *SECTIONS)
    for section in raw:
        if section not in known:
            raise UserError(f"unknown recipe section '{section}'{did_you_mean(section, known)}; sections: {', '.join(known)}")
    method_raw = raw.get("method") or {}
    if not isinstance(method_raw, dict):
        raise UserError("recipe section 'method' must be a mapping with at least 'name'")
    name = method_raw.get("name")
    if not name:
        raise UserError("the recipe names no method; pass --method NAME or set method.name (see `sslcli methods`)")
    method = build_section(method_config(str(name)), method_raw, "method")
    sections = {s: build_section(cls, raw.get(s), s) for s, cls in SECTIONS.items()}
    recipe = Recipe(method=method, **sections)
    method.validate()
    _check_consistency(recipe)
    return recipe


def _check_consistency(recipe: Recipe) -> None:
    for key in ("crop_scale", "crop_ratio", "blur_sigma"):
        pair = getattr(recipe.augment, key)
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise UserError(f"recipe key 'augment.{key}' must be two positive numbers [low, high] with low <= high, got {pair}")
    for key in ("blur", "solarize"):
        value = getattr(recipe.augment, key)
        if isinstance(value, list) and len(value) != 2:
            raise UserError(f"recipe key 'augment.{key}' must be one probability or a pair [first view, second view], "
                            f"got {value}")
    if recipe.augment.crop_scale[1] > 1:
        raise UserError(f"recipe key 'augment.crop_scale' must lie within (0, 1], got {recipe.augment.crop_scale}")
