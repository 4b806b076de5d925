"""Barlow Twins: the cross-correlation matrix of two views' embeddings, each dimension
standardised over the batch, is pulled towards the identity: equal on the diagonal
(invariance), decorrelated off it (redundancy reduction, weighted by lambda).

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", ICML 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import distributed
from ..losses import barlow_twins_loss
from ..recipe import MethodConfig, option
from ..registry import register_method
from ._joint import JointEmbedding
from .base import MethodContext, StepOutput, projection_mlp


@dataclass
class BarlowTwinsConfig(MethodConfig):
    lambda_offdiag: float = option(5.0e-3, "weight of the off-diagonal (redundancy) terms", min=0)
    scale: float = option(1.0, "factor on the whole loss (0.1 or 0.025 suit small projectors)", min=0)
    proj_hidden_dim: int = option(2048, "projector hidden width", min=1)
    proj_dim: int = option(2048, "projector output width (the correlation matrix is proj_dim square)", min=1)
    proj_layers: int = option(3, "linear layers in the projector", min=1)


@register_method("barlow-twins")
class BarlowTwins(JointEmbedding):
    Config = BarlowTwinsConfig
    description = "non-contrastive: make the two views' cross-correlation matrix the identity"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: BarlowTwinsConfig = self.cfg
        # no last bias: the loss standardises each dimension over the batch, which removes it
        self.projector = projection_mlp(ctx.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers, last_bias=False)

    def training_step(self, views: torch.Tensor) -> StepOutput:
        z = self.projector(self.backbone(views)).float()
        z1, z2 = z.chunk(2)
        # the global batch's correlation on every rank; gradients are summed back to each rank's share
        g1, g2 = distributed.gather_with_grad(z1), distributed.gather_with_grad(z2)
        loss = self.cfg.scale * barlow_twins_loss(g1, g2, self.cfg.lambda_offdiag)
        return loss, self.spread(z1)
