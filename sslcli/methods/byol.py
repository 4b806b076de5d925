"""BYOL: an online network (backbone, projector, predictor) learns to predict the projection a
momentum (EMA) target network gives another view of the same image; no negatives.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020. The target gets no gradient (`byol_loss` detaches it); its momentum rises from
`momentum` to 1 along a cosine, as in the paper.

With `small_crops` (multi-crop, Caron et al. 2020, as DINO uses it for its momentum teacher),
each small crop's prediction regresses onto the targets of both large views, and every
prediction-target pair weighs the same in the loss; the target network sees only the large views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.images import Batch
from ..losses import byol_loss
from ..recipe import option
from ..registry import register_method
from ._joint import JointEmbedding, MultiCropConfig, cosine_momentum, ema_update, momentum_copy
from .base import MethodContext, StepOutput, projection_mlp


@dataclass
class BYOLConfig(MultiCropConfig):
    momentum: float = option(0.99, "EMA momentum of the target network at the start (0.996 in the paper)", min=0, max=1)
    momentum_ramp: bool = option(True, "raise the momentum to 1 along a cosine over training")
    proj_hidden_dim: int = option(4096, "projector and predictor hidden width", min=1)
    proj_dim: int = option(256, "projection dimension", min=1)


@register_method("byol")
class BYOL(JointEmbedding):
    Config = BYOLConfig
    description = "non-contrastive: predict a momentum target's embedding of another view (no negatives)"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: BYOLConfig = self.cfg
        self.projector = projection_mlp(ctx.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = projection_mlp(cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.target_backbone = momentum_copy(ctx.backbone)
        self.target_projector = momentum_copy(self.projector)
        self.small = self.small_crop_augment()

    def make_views(self, batch: Batch, gen: torch.Generator):
        large = super().make_views(batch, gen)
        return large if self.small is None else (large, self.small_views(self.pair(batch.images)[0], gen))

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.backbone(x))
        return z, self.predictor(z).float()

    def training_step(self, views) -> StepOutput:
        large, small = views if isinstance(views, tuple) else (views, None)
        z, p = self._predict(large)
        p1, p2 = p.chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(self.target_backbone(large)).float().chunk(2)
        pairs = [(p1, t2), (p2, t1)]
        if small is not None:
            for q in self._predict(small)[1].split(len(t1)):
                pairs += [(q, t1), (q, t2)]
        loss = sum(byol_loss(prediction, target) for prediction, target in pairs) / len(pairs)
        return loss, self.spread(z.float())

    def on_step_end(self, progress: float) -> None:
        m = cosine_momentum(self.cfg.momentum, progress, self.cfg.momentum_ramp)
        ema_update(self.target_backbone, self.backbone, m)
        ema_update(self.target_projector, self.projector, m)
