"""SwAV: each view is scored against a set of learnable prototypes; Sinkhorn-Knopp turns the
scores of the two large crops into soft codes that use every prototype equally (equipartition),
and every crop learns to predict the code of another crop (swapped prediction). Multi-crop adds
small low-resolution crops that only predict.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
NeurIPS 2020.

The prototypes are renormalised before every step and get no gradient for the first
`freeze_prototypes_steps`. For small batches an optional queue of past large-crop embeddings
joins the Sinkhorn problem from `queue_start_epoch` on, so the equipartition is taken over
enough samples; it is module state, checkpointed with the rest. Under torchrun the queue holds
every rank's crops and is the same on every rank (one checkpoint holds it whole), and each rank
brings its part of it to the Sinkhorn problem, which is then the one process's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..data.augment import ViewAugment
from ..data.images import Batch
from ..losses import code_entropy, sinkhorn_knopp, swav_loss
from ..recipe import option
from ..registry import register_method
from ._joint import JointEmbedding, MultiCropConfig, check_scale
from .base import MethodContext, StepOutput, projection_mlp

# Codes' entropy over ln K above which SwAV has collapsed to uniform codes: 0.9999 in a collapsed
# run on synthetic:shapes (loss stuck at ln 64), 0.68-0.71 at the end of a healthy one.
UNIFORM_CODES = 0.99


@dataclass
class SwAVConfig(MultiCropConfig):
    prototypes: int = option(3000, "number of prototypes (clusters)", min=2)
    temperature: float = option(0.1, "softmax temperature of the swapped prediction", min=1e-4)
    epsilon: float = option(0.05, "Sinkhorn-Knopp entropy regularisation", min=1e-4)
    sinkhorn_iterations: int = option(3, "Sinkhorn-Knopp iterations", min=1, max=1000)
    freeze_prototypes_steps: int = option(300, "steps at the start during which the prototypes are not trained", min=0)
    small_crops: int = option(4, "low-resolution crops per image besides the 2 large ones", min=0)
    large_crop_scale: list[float] = option([0.3, 1.0], "area range of the 2 large crops (replaces augment.crop_scale)")
    queue_size: int = option(0, "past large-crop embeddings added to the Sinkhorn problem; 0: no queue", min=0)
    queue_start_epoch: int = option(15, "epoch from which the queue is used (it fills from the start)", min=0)
    proj_hidden_dim: int = option(2048, "projection MLP hidden width", min=1)
    proj_dim: int = option(128, "projection output (and prototype) dimension", min=1)

    def validate(self) -> None:
        super().validate()
        check_scale("large_crop_scale", self.large_crop_scale)


@register_method("swav")
class SwAV(JointEmbedding):
    Config = SwAVConfig
    description = "clustering: predict another crop's equipartitioned prototype code (Sinkhorn-Knopp, multi-crop)"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: SwAVConfig = self.cfg
        large = replace(ctx.recipe.augment, crop_scale=list(cfg.large_crop_scale))
        self.large = tuple(ViewAugment(large, self.crop_size, view) for view in (0, 1))
        self.small = self.small_crop_augment()
        self.projector = projection_mlp(ctx.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.prototypes, bias=False)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))
        self.register_buffer("queue", torch.zeros(2, cfg.queue_size, cfg.proj_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def make_views(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        images = batch.images
        large = torch.cat([augment(frames, gen) for augment, frames in zip(self.large, self.pair(images))])
        if not self.cfg.small_crops:
            return (large,)
        return large, self.small_views(self.pair(images)[0], gen)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x)).float(), dim=1)

    def _queue_active(self) -> bool:
        epoch = float(self.progress) * self.recipe.train.epochs
        return self.cfg.queue_size > 0 and epoch >= self.cfg.queue_start_epoch

    def training_step(self, views) -> StepOutput:
        cfg = self.cfg
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        weight = self.prototypes.weight
        if int(self.steps_done) < cfg.freeze_prototypes_steps:
            weight = weight.detach()
        z = torch.cat([self._embed(v) for v in views])
        n = views[0].shape[0] // 2
        scores = z @ weight.float().T
        crops = list(scores.split(n))
        codes = []
        with torch.no_grad():
            use_queue = self._queue_active() and int(self.queue_filled) >= cfg.queue_size
            for i in range(2):
                s = crops[i].detach()
                if use_queue:  # each rank brings its part of the queue to the one global problem
                    mine = torch.tensor_split(self.queue[i], distributed.world_size())[distributed.rank()]
                    s = torch.cat([mine @ weight.detach().float().T, s])
                codes.append(sinkhorn_knopp(s, cfg.epsilon, cfg.sinkhorn_iterations)[-n:])
            if cfg.queue_size:  # every rank's large crops, so the queue is the same on every rank
                large = distributed.gather(z[:2 * n].detach().view(2, n, -1).transpose(0, 1)).transpose(0, 1)
                self.queue.copy_(torch.cat([large, self.queue], 1)[:, :cfg.queue_size])
                self.queue_filled.fill_(min(cfg.queue_size, int(self.queue_filled) + large.shape[1]))
            used = codes[0].argmax(1).unique().numel() / cfg.prototypes
        loss = swav_loss(crops, codes, cfg.temperature)
        return loss, {"prototypes_used": torch.tensor(used), "code_entropy": code_entropy(codes[0]),
                      **self.spread(z[:n])}

    def epoch_warning(self, record: dict[str, float]) -> Optional[str]:
        entropy = record.get("code_entropy")
        if entropy is not None and entropy > UNIFORM_CODES:
            return (f"the SwAV codes are uniform: their entropy is {entropy:.4f} of ln K, so no prototype tells "
                    f"images apart and the swapped prediction teaches nothing (the loss sits at ln K); lower "
                    f"method.epsilon (e.g. {self.cfg.epsilon / 2.5:g}) or method.prototypes, or raise the augmentation strength")
        return super().epoch_warning(record)

    def on_step_end(self, progress: float) -> None:
        self.steps_done += 1
        self.progress.fill_(progress)
