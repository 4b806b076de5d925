"""Supervised training of a linear head on the backbone: what `sslcli finetune` runs, from
pretrained weights (fine-tuning) or from random ones (the supervised baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import ViewAugment
from ..data.images import Batch
from ..recipe import MethodConfig, option
from ..registry import register_method
from .base import Method, MethodContext, StepOutput


@dataclass
class SupervisedConfig(MethodConfig):
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", min=0, max=1)


@register_method("supervised")
class Supervised(Method):
    Config = SupervisedConfig
    description = "supervised: a linear head trained with labels (what finetune runs; the supervised baseline)"
    uses_labels = True

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        if not ctx.num_classes:
            raise ValueError("the supervised method needs the number of classes")
        self.head = nn.Linear(ctx.feature_dim, ctx.num_classes)
        self.augment = ViewAugment(ctx.recipe.augment, self.crop_size)

    def make_views(self, batch: Batch, gen: torch.Generator):
        return self.augment(batch.images, gen), batch.labels

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, views) -> StepOutput:
        images, labels = views
        logits = self.classify(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.label_smoothing)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return loss, {"train_acc": acc}
