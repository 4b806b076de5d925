"""VICReg: the two views' embeddings agree (invariance), every dimension keeps a standard
deviation of at least 1 over the batch (variance), and dimensions are decorrelated (covariance).

Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import distributed
from ..losses import vicreg_loss
from ..recipe import MethodConfig, option
from ..registry import register_method
from ._joint import JointEmbedding
from .base import MethodContext, StepOutput, projection_mlp


@dataclass
class VICRegConfig(MethodConfig):
    invariance_weight: float = option(25.0, "weight of the mean squared distance between the views (lambda)", min=0)
    variance_weight: float = option(25.0, "weight of the hinge on each dimension's std (mu)", min=0)
    covariance_weight: float = option(1.0, "weight of the off-diagonal covariances (nu)", min=0)
    proj_hidden_dim: int = option(2048, "expander hidden width", min=1)
    proj_dim: int = option(2048, "expander output width", min=1)
    proj_layers: int = option(3, "linear layers in the expander", min=1)


@register_method("vicreg")
class VICReg(JointEmbedding):
    Config = VICRegConfig
    description = "non-contrastive: invariance, a variance floor and decorrelation of the embeddings"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: VICRegConfig = self.cfg
        self.projector = projection_mlp(ctx.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers)

    def training_step(self, views: torch.Tensor) -> StepOutput:
        z = self.projector(self.backbone(views)).float()
        z1, z2 = z.chunk(2)
        cfg = self.cfg
        # the global batch's statistics on every rank; gradients are summed back to each rank's share
        g1, g2 = distributed.gather_with_grad(z1), distributed.gather_with_grad(z2)
        loss, parts = vicreg_loss(g1, g2, cfg.invariance_weight, cfg.variance_weight, cfg.covariance_weight)
        return loss, {**parts, **self.spread(z1)}
