"""PIRL: an image and a jigsaw-shuffled version of it should have the same representation.
Both are compared with a memory bank holding one running-average embedding per training
image; the negatives of the NCE (InfoNCE here) loss are drawn from that bank.

Misra and van der Maaten, "Self-Supervised Learning of Pretext-Invariant Representations",
CVPR 2020. The loss mixes the two terms of the paper:
lambda * NCE(m_I, g(v_It)) + (1 - lambda) * NCE(m_I, f(v_I)),
where m_I is the bank's entry for the image, f the image branch and g the tile branch (the
backbone on each of 9 shuffled tiles, a projection per tile, the 9 concatenated and projected).
The tiles come from the jigsaw plugin's machinery. The bank is module state: it is written to
every checkpoint and a resumed run continues with it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..data.images import Batch
from ..errors import UserError
from ..losses import info_nce
from ..recipe import MethodConfig, option
from ..registry import register_method
from ._joint import JointEmbedding
from .base import MethodContext, StepOutput, patch_input_side, resize_patches, view_side
from .jigsaw import TILES, check_tiles_fit, cut_tiles, normalise_tiles, shuffle_tiles, tile_side


@dataclass
class PIRLConfig(MethodConfig):
    temperature: float = option(0.07, "temperature of the NCE scores", min=1e-4)
    mix: float = option(0.5, "lambda: weight of the image-vs-tiles term, 1 - lambda on image-vs-image", min=0, max=1)
    negatives: int = option(4096, "negatives drawn from the memory bank per step (at most the bank size)", min=1)
    bank_momentum: float = option(0.5, "memory bank update: m <- momentum * m + (1 - momentum) * f(v_I)", min=0, max=1)
    embedding_dim: int = option(128, "width of the embeddings and of the memory bank", min=1)
    tile: Union[int, Literal["auto"]] = option("auto", "tile side in px; auto: 85% of a third of the view", min=8)
    tile_input: Union[int, Literal["auto"]] = option(
        "auto", "side in px the tiles are resized to for the backbone; auto: the tile side, at least 32", min=8)
    tile_grayscale: float = option(0.3, "probability that a tile is turned grey", min=0, max=1)


@register_method("pirl")
class PIRL(JointEmbedding):
    Config = PIRLConfig
    description = "contrastive: an image and its shuffled tiles match one memory-bank entry (jigsaw-invariant)"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: PIRLConfig = self.cfg
        self.tile = tile_side(self.crop_size, cfg.tile)
        self.tile_input = patch_input_side(self.tile, cfg.tile_input)
        self.image_head = nn.Linear(ctx.feature_dim, cfg.embedding_dim)
        self.tile_head = nn.Linear(ctx.feature_dim, cfg.embedding_dim)
        self.tiles_head = nn.Linear(TILES * cfg.embedding_dim, cfg.embedding_dim)
        self.register_buffer("bank", torch.zeros(0, cfg.embedding_dim))

    @classmethod
    def check_data(cls, data: Any, recipe) -> None:
        super().check_data(data, recipe)
        check_tiles_fit(cls.name, view_side(recipe, data.image_size), recipe.method.tile)

    @torch.no_grad()
    def setup(self, train: Any) -> None:
        """One random unit vector per training image, drawn from the recipe's seed."""
        gen = torch.Generator().manual_seed(self.recipe.train.seed)
        bank = F.normalize(torch.randn(len(train), self.cfg.embedding_dim, generator=gen), dim=1)
        self.bank = bank.to(self.bank.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "bank")
        if saved is not None and saved.shape != self.bank.shape:
            raise UserError(f"the checkpoint's memory bank holds {saved.shape[0]} images, but the training data has "
                            f"{self.bank.shape[0]}; resume on the run's own data")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def make_views(self, batch: Batch, gen: torch.Generator):
        images = batch.images
        indices = batch.indices
        first, second = self.pair(images)
        image = self.augments[0](first, gen)
        tiles = cut_tiles(self.augments[1](second, gen), self.tile, gen, channel_jitter=1)
        order = torch.argsort(torch.rand(tiles.shape[:2], generator=gen, device=tiles.device), dim=1)
        tiles = shuffle_tiles(tiles, order, torch.arange(len(order), device=order.device))
        tiles = normalise_tiles(tiles, gen, self.cfg.tile_grayscale)
        negatives = torch.randint(len(self.bank), (min(self.cfg.negatives, len(self.bank)),), generator=gen,
                                  device=self.bank.device)
        return image, resize_patches(tiles, self.tile_input).flatten(0, 1), indices.to(self.bank.device), negatives

    def shard_views(self, views, n: int):
        image, tiles, indices, negatives = views  # tiles item-major; the negatives are the whole batch's
        return (distributed.share(image, n), distributed.share_items(tiles, n), distributed.share(indices, n),
                negatives)

    def training_step(self, views) -> StepOutput:
        image, tiles, indices, drawn = views
        cfg = self.cfg
        n = image.shape[0]
        f = F.normalize(self.image_head(self.backbone(image)).float(), dim=1)
        per_tile = self.tile_head(self.backbone(tiles)).view(n, -1)
        g = F.normalize(self.tiles_head(per_tile).float(), dim=1)
        memory, negatives = self.bank[indices].clone(), self.bank[drawn].clone()
        loss = cfg.mix * info_nce(g, memory, negatives, cfg.temperature) + \
            (1 - cfg.mix) * info_nce(f, memory, negatives, cfg.temperature)
        with torch.no_grad():
            agree = (F.cosine_similarity(f, g) > F.cosine_similarity(f, g.roll(1, 0))).float().mean()
            # every rank's images, so all ranks keep the same bank
            indices, f = distributed.gather(indices), distributed.gather(f.detach())
            self.bank[indices] = F.normalize(cfg.bank_momentum * self.bank[indices] + (1 - cfg.bank_momentum) * f, dim=1)
        return loss, {"tiles_match": agree, **self.spread(f)}
