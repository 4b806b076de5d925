"""The shared base of every method plugin.

A plugin declares its recipe keys (a `Config` dataclass), which views it makes from a batch of
uint8 images (`make_views`), its heads (as submodules), and `training_step(views)` returning the
loss and a dict of metrics. State that must survive a resume (queues, memory banks, momentum
encoders) lives in modules or registered buffers, so the engine checkpoints it with the rest.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch
import torch.nn as nn

from ..errors import UserError
from ..recipe import MethodConfig, Recipe

StepOutput = tuple[torch.Tensor, dict[str, torch.Tensor]]


class Method(nn.Module):
    name: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig
    description: ClassVar[str] = ""
    data_kind: ClassVar[str] = "images"  # what it trains on: images (later: video, audio-video)
    uses_labels: ClassVar[bool] = False
    uses_indices: ClassVar[bool] = False  # make_views also gets each image's index in the training split

    def __init__(self, cfg: MethodConfig, recipe: Recipe, backbone: nn.Module, feature_dim: int, image_size: int,
                 num_classes: Optional[int] = None):
        super().__init__()
        self.num_classes = num_classes
        self.cfg = cfg
        self.recipe = recipe
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.crop_size = view_side(recipe, image_size)

    @classmethod
    def check_data(cls, data: Any, recipe: Recipe) -> None:
        """Refuse, with a UserError naming the fix, data this method cannot train on. Called
        before anything is written; plugins with further needs (tile sizes, clip lengths)
        extend it."""
        kind = getattr(data, "kind", "images")
        if kind != cls.data_kind:
            raise UserError(f"method '{cls.name}' trains on {cls.data_kind}, but '{data.name}' holds {kind}; "
                            f"see `sslcli methods` for what each method takes")
        if cls.uses_labels and not data.labelled:
            raise UserError(f"method '{cls.name}' trains with labels, but '{data.name}' is unlabelled; "
                            f"use a folder of class subfolders")

    def setup(self, train: Any) -> None:
        """Called once before training with the training split (a `Split` of uint8 images), for
        methods that derive fixed state from the data, such as a colour prior. Keep such state in
        registered buffers: a resumed run loads it from the checkpoint afterwards."""

    def visualize(self, images: torch.Tensor) -> Optional[Any]:
        """A picture of what the method does on a few uint8 val images (on the training device),
        as a PIL image written to the run folder as visual.png at the end of training; None for
        methods with nothing to show."""
        return None

    def make_views(self, images: torch.Tensor, gen: torch.Generator, labels: Optional[torch.Tensor] = None) -> Any:
        """Turn a batch of uint8 images (on the training device) into this method's inputs.
        `labels` is given only to methods with `uses_labels`; methods with `uses_indices` also
        get `indices`, each image's position in the training split (for per-image memory)."""
        raise NotImplementedError

    def training_step(self, views: Any) -> StepOutput:
        raise NotImplementedError

    def on_step_end(self, progress: float) -> None:
        """Called after each optimiser step with the fraction of training done (momentum updates)."""

    def epoch_warning(self, record: dict[str, float]) -> Optional[str]:
        """A warning to show after an epoch whose averaged metrics are `record` (collapse), or None."""
        return None


def view_side(recipe: Recipe, image_size: int) -> int:
    """The side of the training views: augment.crop_size, or the image side when it is auto."""
    crop = recipe.augment.crop_size
    return int(image_size) if crop == "auto" else int(crop)


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a final Linear: the SimCLR/MoCo v2 projection head."""
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*blocks)


MIN_PATCH_INPUT = 32  # px: a ResNet stem turns a smaller patch into a map of 8x8 or less


def patch_input_side(patch: int, setting: int | str = "auto") -> int:
    """The side patch-based tasks (jigsaw, relative position) feed their patches to the backbone
    at: `setting`, or with "auto" the patch side itself, raised to 32 px for smaller patches."""
    return int(setting) if setting != "auto" else max(patch, MIN_PATCH_INPUT)


def resize_patches(x: torch.Tensor, side: int) -> torch.Tensor:
    """Patches (..., C, p, p) resized bilinearly to (..., C, side, side); unchanged when p == side."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    lead = x.shape[:-3]
    out = torch.nn.functional.interpolate(x.reshape(-1, *x.shape[-3:]), size=(side, side), mode="bilinear",
                                          align_corners=False, antialias=x.shape[-1] > side)
    return out.view(*lead, *out.shape[-3:])
