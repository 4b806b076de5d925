"""MoCo v2: a query encoder trained against a momentum (EMA) key encoder, with a FIFO queue of
past keys as the negatives of an InfoNCE loss.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020;
Chen et al., "Improved Baselines with Momentum Contrastive Learning" (MoCo v2), 2020.

The queue, its pointer and the key encoder are module state, so a checkpoint holds them and a
resumed run continues with the very same negatives. The queue may have any length: keys that
run past its end wrap round to its start. On one device the key batch is not shuffled across
GPUs (MoCo's shuffle-BN); with BatchNorm statistics shared by a batch this leak is small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import distributed
from ..losses import info_nce, info_nce_logits
from ..recipe import MethodConfig, option
from ..registry import register_method
from ._joint import JointEmbedding, cosine_momentum, ema_update, momentum_copy
from .base import MethodContext, StepOutput, projection_mlp


@dataclass
class MoCoConfig(MethodConfig):
    temperature: float = option(0.2, "InfoNCE temperature", min=1e-4)
    queue_size: int = option(4096, "keys kept as negatives (K); any length, wrapping at its end", min=1)
    momentum: float = option(0.99, "EMA momentum of the key encoder at the start", min=0, max=1)
    momentum_ramp: bool = option(True, "raise the momentum to 1 along a cosine over training")
    symmetric: bool = option(True, "also score view 2 against view 1's keys (two losses averaged)")
    proj_hidden_dim: int = option(2048, "projection MLP hidden width", min=1)
    proj_dim: int = option(128, "projection output dimension (the queue's key width)", min=1)


def enqueue(queue: torch.Tensor, pointer: torch.Tensor, keys: torch.Tensor) -> None:
    """Write `keys` (N, D) into `queue` (K, D) in FIFO order from `pointer`, wrapping at the end,
    and move the pointer past them. With N > K only the last K keys stay."""
    size = queue.shape[0]
    keys = keys[-size:]
    slots = (int(pointer) + torch.arange(keys.shape[0], device=queue.device)) % size
    queue[slots] = keys.to(queue.dtype)
    pointer.fill_((int(pointer) + keys.shape[0]) % size)


@register_method("moco")
class MoCo(JointEmbedding):
    Config = MoCoConfig
    description = "contrastive: match a momentum encoder's key among a queue of past keys (MoCo v2)"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: MoCoConfig = self.cfg
        self.projector = projection_mlp(ctx.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.key_backbone = momentum_copy(ctx.backbone)
        self.key_projector = momentum_copy(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def keys(self, views: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(views)).float(), dim=1)

    def training_step(self, views: torch.Tensor) -> StepOutput:
        cfg = self.cfg
        q = self.projector(self.backbone(views)).float()
        k = self.keys(views)
        q1, q2 = q.chunk(2)
        k1, k2 = k.chunk(2)
        queue = self.queue.clone()  # the negatives of this step, before its own keys go in
        loss = info_nce(q1, k2, queue, cfg.temperature)
        if cfg.symmetric:
            loss = (loss + info_nce(q2, k1, queue, cfg.temperature)) / 2
        with torch.no_grad():
            acc = (info_nce_logits(q1, k2, queue).argmax(1) == 0).float().mean()
            # every rank's keys, so all ranks keep the same queue
            keys = torch.cat([distributed.gather(k2), distributed.gather(k1)]) if cfg.symmetric else distributed.gather(k2)
            enqueue(self.queue, self.queue_pointer, keys)  # in the order one process would enqueue them
        return loss, {"pos_acc": acc, **self.spread(q1)}

    def on_step_end(self, progress: float) -> None:
        m = cosine_momentum(self.cfg.momentum, progress, self.cfg.momentum_ramp)
        ema_update(self.key_backbone, self.backbone, m)
        ema_update(self.key_projector, self.projector, m)
