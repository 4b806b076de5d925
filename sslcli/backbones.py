"""timm backbones: creation by name, the small-input stem, pooled features, and weights saved so
that `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))` loads them."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from .data.augment import IMAGENET_MEAN, IMAGENET_STD
from .errors import UserError, did_you_mean
from .files import atomic_write

SMALL_INPUT_AUTO_MAX = 32  # the standard stem leaves a 1x1 map at this size and below
RANDOM = "random:"


@dataclass(frozen=True)
class ModelRef:
    """MODEL as every command takes it, parsed once (`parse_model`): `random:TIMM_NAME` (the
    random-init floor), a run folder from `sslcli pretrain`, or a `.safetensors` weights file."""

    text: str
    random_name: Optional[str] = None  # the timm name of a random: model

    @property
    def is_random(self) -> bool:
        return self.random_name is not None

    @property
    def path(self) -> Optional[Path]:
        return None if self.is_random else Path(self.text)

    @property
    def run_folder(self) -> Optional[Path]:
        """Where the run's own files (recipe.yaml, checkpoints) are: the folder given, or the folder
        a weights file sits in; None for a random: model."""
        if self.path is None:
            return None
        return self.path if self.path.is_dir() else self.path.parent

    def __str__(self) -> str:
        return self.text


def parse_model(spec: "str | ModelRef") -> ModelRef:
    """The one parser of MODEL; a ModelRef is returned as it is."""
    if isinstance(spec, ModelRef):
        return spec
    if spec.startswith(RANDOM):
        name = spec[len(RANDOM):]
        if not name:
            raise UserError("'random:' needs a timm model name, e.g. random:resnet18")
        return ModelRef(spec, name)
    return ModelRef(spec)


@dataclass
class BackboneInfo:
    """What backbone.json records: enough to rebuild the network and feed it."""

    timm_name: str
    small_input: bool
    input_size: int
    feature_dim: int
    mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list = field(default_factory=lambda: list(IMAGENET_STD))
    method: str = "random"
    classifier: str = "the classifier weights are zeros (untrained); they exist so timm loads the file strictly"
    epoch: int = 0
    in_chans: int = 3
    front_end: Optional[dict] = None  # an audio tower: the spectrogram settings its input is made with
    sha256: Optional[str] = None  # of the weights file it describes, checked when they are read


def resolve_small_input(small_input, image_size: int) -> bool:
    if small_input == "auto":
        return image_size <= SMALL_INPUT_AUTO_MAX
    return bool(small_input)


def _apply_small_input_stem(model: nn.Module, name: str) -> None:
    """3x3 stride-1 first convolution and no max-pool, for inputs of a few dozen pixels."""
    conv1, maxpool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if isinstance(conv1, nn.Conv2d) and maxpool is not None:
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=conv1.bias is not None)
        model.maxpool = nn.Identity()
        return
    raise UserError(
        f"backbone.small_input is only supported for ResNet-style timm models (conv1 + maxpool), not '{name}'; "
        f"set --set backbone.small_input=false"
    )


def import_timm():
    """timm, imported without the W&B import its training utilities try at import time: with wandb
    installed, that import cost every start 0.4 s, for logging code sslcli never calls (a run that
    names wandb in train.loggers imports it itself)."""
    if "timm" not in sys.modules and "wandb" not in sys.modules:
        sys.modules["wandb"] = None  # makes `import wandb` raise ImportError, which timm expects
        try:
            import timm  # noqa: F401
        finally:
            if sys.modules.get("wandb", 0) is None:
                del sys.modules["wandb"]
    import timm

    return timm


def check_backbone_name(name: str) -> None:
    timm = import_timm()
    if not timm.is_model(name):
        raise UserError(
            f"unknown backbone '{name}'{did_you_mean(name, timm.list_models())}; "
            f"any timm model name works, e.g. resnet18, resnet50, convnext_tiny"
        )


def create_backbone(
    name: str, small_input=False, image_size: int = 224, zero_init_last: bool = True, in_chans: int = 3
) -> tuple[nn.Module, BackboneInfo]:
    """A randomly initialised timm model that maps images to pooled features (no classifier).

    `zero_init_last=False` starts residual blocks as torchvision does (last BatchNorm weight 1);
    `in_chans=1` takes one-channel inputs such as spectrograms."""
    timm = import_timm()

    check_backbone_name(name)
    extra = {} if zero_init_last else {"zero_init_last": False}
    if in_chans != 3:
        extra["in_chans"] = in_chans
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **extra)
    except TypeError as exc:
        if "zero_init_last" not in str(exc):
            raise
        raise UserError(
            f"backbone.zero_init_last=false applies to ResNet-style timm models, not '{name}'; remove the setting"
        ) from None
    small = resolve_small_input(small_input, image_size)
    if small:
        _apply_small_input_stem(model, name)
    info = BackboneInfo(timm_name=name, small_input=small, input_size=image_size, feature_dim=model.num_features,
                        in_chans=in_chans)
    return model, info


def timm_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights plus a zero classifier, keyed exactly as timm names them."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    classifier, classes = cfg.get("classifier"), cfg.get("num_classes")
    if isinstance(classifier, str) and classes and f"{classifier}.weight" not in state:
        dtype = next(iter(state.values())).dtype
        state[f"{classifier}.weight"] = torch.zeros(classes, model.num_features, dtype=dtype)
        state[f"{classifier}.bias"] = torch.zeros(classes, dtype=dtype)
    return state


def save_backbone(model: nn.Module, info: BackboneInfo, folder: Path, stem: str = "backbone") -> Path:
    """Write <stem>.safetensors and <stem>.json (backbone.*, or a second tower's) into `folder`,
    each atomically."""
    import hashlib
    from dataclasses import replace

    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{stem}.safetensors"
    data = save(timm_state_dict(model), metadata={"timm_name": info.timm_name})
    atomic_write(weights, data)
    info = replace(info, sha256=hashlib.sha256(data).hexdigest())
    atomic_write(folder / f"{stem}.json", (json.dumps(asdict(info), indent=2) + "\n").encode())
    return weights


def read_info(spec: "str | ModelRef", tower: str = "vision") -> tuple[BackboneInfo, Path, Path]:
    """The json of a run folder's backbone (or audio tower), or of a .safetensors file, and the
    weights file and json file; the weights themselves are not read."""
    ref = parse_model(spec)
    if ref.is_random:
        raise UserError(f"'{ref}' is a random model, with no weights file; give a run folder or a backbone.safetensors")
    path = ref.path
    if not path.exists():
        raise UserError(
            f"model '{spec}' does not exist; give a run folder from `sslcli pretrain`, "
            f"a backbone.safetensors file, or random:TIMM_NAME"
        )
    stem = "audio_backbone" if tower == "audio" else "backbone"
    weights = path / f"{stem}.safetensors" if path.is_dir() else path
    meta = weights.with_suffix(".json")  # audio_backbone.json beside audio_backbone.safetensors
    if not meta.is_file():
        meta = weights.with_name("backbone.json")
    if not weights.is_file() and tower == "audio":
        raise UserError(f"'{path}' holds no audio_backbone.safetensors: only audio-visual runs have an audio tower; "
                        f"use --tower vision")
    if not weights.is_file():
        raise UserError(f"'{path}' holds no backbone.safetensors; is it a finished or checkpointed pretrain run?")
    if not meta.is_file():
        raise UserError(f"'{meta}' is missing; it is written beside {weights.name} and records the architecture")
    try:
        return BackboneInfo(**json.loads(meta.read_text())), weights, meta
    except (ValueError, TypeError) as exc:
        raise UserError(f"'{meta}' is not a valid backbone.json ({exc})") from None


def read_weights(spec: "str | ModelRef", tower: str = "vision") -> tuple[dict[str, torch.Tensor], BackboneInfo, Path]:
    """The weights and json of a run folder's backbone (or audio tower), or of a .safetensors file;
    the file is read once, checked against the sha256 its json records, then parsed."""
    import hashlib

    from safetensors import SafetensorError
    from safetensors.torch import load

    info, weights, meta = read_info(spec, tower)
    try:
        data = weights.read_bytes()
        if info.sha256 is not None and hashlib.sha256(data).hexdigest() != info.sha256:
            raise UserError(f"weights '{weights}' do not match the sha256 in '{meta.name}': the file is damaged "
                            f"(or its run was killed between writing the two); re-copy it, or --resume the run to write "
                            f"both again")
        state = load(data)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"cannot read weights '{weights}' ({exc}); the file is damaged, rerun or re-copy it") from None
    return state, info, weights


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], weights: Path, name: str) -> None:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    state = {k: v for k, v in state.items() if not k.startswith(f"{cfg.get('classifier')}.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise UserError(f"weights '{weights}' do not fit {name}: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise UserError(f"weights '{weights}' do not fit {name} (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_weights_into(model: nn.Module, info: BackboneInfo, spec: str) -> BackboneInfo:
    """Copy the weights of run folder / file `spec` into `model`, refusing another architecture."""
    state, saved, weights = read_weights(spec)
    if (saved.timm_name, saved.small_input) != (info.timm_name, info.small_input):
        raise UserError(
            f"backbone.weights '{spec}' are a {saved.timm_name} (small_input={saved.small_input}), but the recipe builds "
            f"a {info.timm_name} (small_input={info.small_input}); set backbone.name and backbone.small_input to match"
        )
    _load_state(model, state, weights, info.timm_name)
    return saved


def load_model(spec: "str | ModelRef", image_size: int | None = None, tower: str = "vision") -> tuple[nn.Module, BackboneInfo]:
    """MODEL as the commands take it: a run folder, a backbone.safetensors file, or random:TIMM_NAME;
    `tower="audio"`: an audio-visual run's audio tower (random: one with one input channel).

    `image_size` is used for `random:` models (whose stem depends on it)."""
    ref = parse_model(spec)
    if ref.is_random:
        name = ref.random_name
        with torch.random.fork_rng():  # the same floor every time, global RNG untouched
            torch.manual_seed(0)
            if tower == "audio":
                return create_backbone(name, False, image_size or 224, in_chans=1)
            return create_backbone(name, "auto", image_size or 224)
    state, info, weights = read_weights(ref, tower)
    model, _ = create_backbone(info.timm_name, info.small_input, info.input_size, in_chans=info.in_chans)
    _load_state(model, state, weights, info.timm_name)
    return model, info
