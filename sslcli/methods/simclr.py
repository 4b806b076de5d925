"""SimCLR: two augmented views of each image, a projection MLP, and the NT-Xent loss.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import nt_xent
from ..recipe import MethodConfig, option
from ..registry import register_method
from ._joint import JointEmbedding
from .base import MethodContext, StepOutput, projection_mlp


@dataclass
class SimCLRConfig(MethodConfig):
    temperature: float = option(0.2, "NT-Xent temperature", min=1e-4)
    proj_hidden_dim: int = option(2048, "projection MLP hidden width", min=1)
    proj_dim: int = option(128, "projection output dimension", min=1)
    proj_layers: int = option(2, "linear layers in the projection MLP", min=1)
    gather_negatives: bool = option(True, "with several GPUs, use every rank's embeddings as negatives")


@register_method("simclr")
class SimCLR(JointEmbedding):
    Config = SimCLRConfig
    description = "contrastive: two augmented views of an image attract, other images repel (NT-Xent)"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: SimCLRConfig = self.cfg
        self.projector = projection_mlp(ctx.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers)

    def training_step(self, views: torch.Tensor) -> StepOutput:
        z = self.projector(self.backbone(views))
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.cfg.temperature, gather=self.cfg.gather_negatives)
        with torch.no_grad():  # how often each view's nearest embedding is its partner
            zn = torch.nn.functional.normalize(z.detach().float(), dim=1)
            sim = zn @ zn.T
            sim.fill_diagonal_(float("-inf"))
            n = z1.shape[0]
            partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
            acc = (sim.argmax(1) == partner).float().mean()
        return loss, {"pos_acc": acc, **self.spread(z1)}
