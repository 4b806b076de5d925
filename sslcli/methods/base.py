"""The shared base of every method plugin.

A plugin declares its recipe keys (a `Config` dataclass), which views it makes from a batch
(`make_views`), its heads (as submodules), and `training_step(views)` returning the loss and a dict
of metrics. It is built from one `MethodContext` and makes views from one `Batch`. State that
must survive a resume (queues, memory banks, momentum encoders) lives in modules or registered
buffers, so the engine checkpoints it with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Optional

import torch
import torch.nn as nn

from .. import distributed
from ..data.clips import SoundPlan
from ..data.images import Batch
from ..errors import UserError
from ..recipe import MethodConfig, Recipe

StepOutput = tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class MethodContext:
    """What a method is built from: the recipe (the method's own keys are `recipe.method`), the
    backbone, the width of its pooled features, the side of the data's images, and the number of
    classes of labelled data (None when unlabelled)."""

    recipe: Recipe
    backbone: nn.Module
    feature_dim: int
    image_size: int
    num_classes: Optional[int] = None


class Method(nn.Module):
    name: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig
    description: ClassVar[str] = ""
    data_kind: ClassVar[str] = "images"  # images (clips are read as frames) or video (clips only)
    two_views: ClassVar[bool] = False  # makes two views of an item (time-contrastive views may come from clips)
    uses_labels: ClassVar[bool] = False
    # under torchrun, shard_views gives each rank its exact share; a plugin that cannot sets False (refused there)
    multi_process: ClassVar[bool] = True

    def __init__(self, ctx: MethodContext):
        super().__init__()
        self.cfg = ctx.recipe.method
        self.recipe = ctx.recipe
        self.backbone = ctx.backbone
        self.feature_dim = ctx.feature_dim
        self.image_size = ctx.image_size
        self.num_classes = ctx.num_classes
        self.crop_size = view_side(ctx.recipe, ctx.image_size)

    @classmethod
    def check_data(cls, data: Any, recipe: Recipe) -> None:
        """Refuse, with a UserError naming the fix, data this method cannot train on. Called
        before anything is written; plugins with further needs (tile sizes, clip lengths)
        extend it."""
        kind = getattr(data, "kind", "images")
        if cls.data_kind == "video" and kind != "video":
            raise UserError(f"method '{cls.name}' trains on video clips, but '{data.name}' holds {kind}; give a folder "
                            f"of video files (or of frame folders), or synthetic:moving-shapes")
        window = recipe.augment.time_window
        if window > 0 and (kind != "video" or not cls.two_views):
            why = "images, not clips" if kind != "video" else f"'{cls.name}' makes no pair of views"
            raise UserError(f"augment.time_window={window:g} takes the two views of a pair from frames of one clip, but "
                            f"{why}; set augment.time_window=0")
        if cls.uses_labels and not data.labelled:
            raise UserError(f"method '{cls.name}' trains with labels, but '{data.name}' is unlabelled; "
                            f"use a folder of class subfolders")

    @classmethod
    def sound_plan(cls, recipe: Recipe) -> Optional[SoundPlan]:
        """How this method hears clips (rate, seconds of sound around a frame); None: it uses no
        sound. A method with a plan gets `batch.audio` (B, T, samples) in `make_views`."""
        return None

    def towers(self) -> dict[str, tuple[nn.Module, Any]]:
        """Networks besides the backbone that the run folder keeps as weights of their own: file
        stem -> (module, its BackboneInfo), e.g. an audio tower."""
        return {}

    def setup(self, train: Any) -> None:
        """Called once before training with the training split (a `Split` of uint8 images), for
        methods that derive fixed state from the data, such as a colour prior. Keep such state in
        registered buffers: a resumed run loads it from the checkpoint afterwards."""

    def visualize(self, images: torch.Tensor) -> Optional[Any]:
        """A picture of what the method does on a few uint8 val images (on the training device),
        as a PIL image written to the run folder as visual.png at the end of training; None for
        methods with nothing to show."""
        return None

    def batch_views(self, batch: Batch, gen: torch.Generator) -> Any:
        """`make_views` of a batch as the data gives it: images, or clips (B, T, 3, S, S), of which
        a method that trains on images sees frames (`take_frames`)."""
        if batch.images.ndim == 5 and self.data_kind != "video":
            batch = replace(batch, images=self.take_frames(batch.images, gen))
        return self.make_views(batch, gen)

    def take_frames(self, clips: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One frame of each clip, drawn at random: (B, 3, S, S)."""
        pick = torch.randint(clips.shape[1], (clips.shape[0],), generator=gen, device=clips.device)
        return clips[torch.arange(clips.shape[0], device=clips.device), pick]

    def make_views(self, batch: Batch, gen: torch.Generator) -> Any:
        """Turn a batch (on the training device) into this method's inputs: `batch.images` uint8
        (B, 3, S, S), or clips (B, T, 3, S, S) for a video method; `batch.indices`, each item's
        position in the training split (for per-image memory); `batch.labels` only for a method
        with `uses_labels` (None otherwise); `batch.audio` (B, T, samples) for a method with a
        `sound_plan`. Random choices come from `gen` alone, so a resumed run makes the same views."""
        raise NotImplementedError

    def shard_views(self, views: Any, n: int) -> Any:
        """This process's share of `views` made for a global batch of `n` items (under torchrun
        every rank makes the global batch's views, then trains on its share). By default every
        tensor whose first dimension is n, or k*n for k views stacked batch after batch, keeps this
        rank's items, and the rest is kept whole; a method with another layout overrides this."""
        return distributed.share(views, n)

    def training_step(self, views: Any) -> StepOutput:
        raise NotImplementedError

    def on_step_end(self, progress: float) -> None:
        """Called after each optimiser step with the fraction of training done (momentum updates)."""

    def epoch_metrics(self, val: Any) -> dict[str, float]:
        """Metrics measured on the val split (or None) after each epoch, in eval mode and without
        gradients, logged with the epoch's record; nothing by default."""
        return {}

    def epoch_warning(self, record: dict[str, float]) -> Optional[str]:
        """A warning to show after an epoch whose averaged metrics are `record` (collapse), or None."""
        return None


def view_side(recipe: Recipe, image_size: int) -> int:
    """The side of the training views: augment.crop_size, or the image side when it is auto."""
    crop = recipe.augment.crop_size
    return int(image_size) if crop == "auto" else int(crop)


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bias: bool = True) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a final Linear: the SimCLR/MoCo v2 projection head. `last_bias=False`
    for a loss that standardises its input, which removes any bias (its gradient is zero)."""
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim, bias=last_bias))
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
