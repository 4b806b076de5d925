"""Jigsaw puzzles: an image is cut into a 3x3 grid of tiles, the tiles are shuffled by one of a
fixed set of permutations, and the network says which. Noroozi and Favaro, "Unsupervised
Learning of Visual Representations by Solving Jigsaw Puzzles", ECCV 2016.

The permutation set is chosen greedily from all 9! orders for maximal Hamming distance, so
the puzzles are far apart and the task cannot be solved by looking at one or two tiles. Each
tile sits at a random offset inside its cell (no edge continuation), is normalised on its own,
and may be turned grey or have its colour channels shifted by a pixel (no chromatic-aberration
or colour-statistics shortcut). The same backbone embeds all nine tiles (a siamese network with
shared weights); the nine embeddings are concatenated and classified. PIRL reuses these
functions for its transformed view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import ViewAugment
from ..data.images import Batch
from ..errors import UserError
from ..recipe import MethodConfig, option
from ..registry import register_method
from ._permutations import TILES, hamming_permutations
from .base import Method, MethodContext, StepOutput, patch_input_side, resize_patches, view_side

GRID = 3
MIN_TILE = 8  # pixels: smaller tiles leave the backbone nothing to see
TILE_FRACTION = 0.85  # tile side / cell side, as 64 of 75 px in the paper
MIN_TILE_STD = 0.1  # in units of the normalised image, whose pixels have a std of about 1


def tile_side(view: int, tile: int | str = "auto") -> int:
    """The tile side for a square view: `tile`, or 85% of a grid cell."""
    return int(tile) if tile != "auto" else max(1, round(view // GRID * TILE_FRACTION))


def cut_tiles(x: torch.Tensor, tile: int, gen: torch.Generator, channel_jitter: int = 0) -> torch.Tensor:
    """The 3x3 grid of `tile`-px tiles of each image (N, C, S, S) -> (N, 9, C, tile, tile), in
    row-major grid order. Each tile sits at a random offset inside its cell of side S // 3; with
    `channel_jitter` J each colour channel is cut J px or less away from the others."""
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"cut_tiles expects square images (N, C, S, S), got shape {tuple(x.shape)}")
    n, c, side, _ = x.shape
    cell = side // GRID
    if tile > cell or tile < 1:
        raise ValueError(f"tiles of {tile} px do not fit cells of {cell} px ({side}-px images)")
    dev = x.device
    slack = cell - tile
    grid = torch.arange(GRID, device=dev) * cell
    top = grid.repeat_interleave(GRID).view(1, TILES) + torch.randint(slack + 1, (n, TILES), generator=gen, device=dev)
    left = grid.repeat(GRID).view(1, TILES) + torch.randint(slack + 1, (n, TILES), generator=gen, device=dev)
    top, left = top.view(n, TILES, 1), left.view(n, TILES, 1)
    if channel_jitter:
        shift = torch.randint(-channel_jitter, channel_jitter + 1, (2, n, TILES, c), generator=gen, device=dev)
        top, left = top + shift[0], left + shift[1]
    steps = torch.arange(tile, device=dev)
    rows = (top.unsqueeze(-1) + steps).clamp(0, side - 1)  # N, 9, C|1, T
    cols = (left.unsqueeze(-1) + steps).clamp(0, side - 1)
    rows, cols = rows.expand(n, TILES, c, tile), cols.expand(n, TILES, c, tile)
    n_idx = torch.arange(n, device=dev).view(n, 1, 1, 1, 1)
    c_idx = torch.arange(c, device=dev).view(1, 1, c, 1, 1)
    return x[n_idx, c_idx, rows.unsqueeze(-1), cols.unsqueeze(-2)]


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Put the tiles of image n in the order perms[labels[n]]: position i then holds the tile of
    grid cell perms[labels[n]][i]."""
    if tiles.ndim != 5 or tiles.shape[1] != TILES:
        raise ValueError(f"shuffle_tiles expects (N, 9, C, T, T) tiles, got shape {tuple(tiles.shape)}")
    order = perms[labels].to(tiles.device)  # N, 9
    return torch.gather(tiles, 1, order.view(*order.shape, 1, 1, 1).expand_as(tiles))


def unshuffle_tiles(shuffled: torch.Tensor, perms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The inverse of `shuffle_tiles`: the tiles back in grid order."""
    order = perms[labels].to(shuffled.device)
    out = torch.empty_like(shuffled)
    out.scatter_(1, order.view(*order.shape, 1, 1, 1).expand_as(shuffled), shuffled)
    return out


def normalise_tiles(tiles: torch.Tensor, gen: torch.Generator, grayscale: float = 0.0) -> torch.Tensor:
    """Each tile to zero mean and unit std on its own, after turning it grey with probability
    `grayscale` (per tile): no tile can be placed by its brightness or colour statistics."""
    n, t = tiles.shape[:2]
    if grayscale > 0:
        grey = torch.rand(n, t, 1, 1, 1, generator=gen, device=tiles.device) < grayscale
        tiles = torch.where(grey, tiles.mean(2, keepdim=True).expand_as(tiles), tiles)
    mean = tiles.mean((2, 3, 4), keepdim=True)
    # a flat tile (sky, a plain background) must not have its faint noise blown up
    std = tiles.std((2, 3, 4), keepdim=True).clamp_min(MIN_TILE_STD)
    return (tiles - mean) / std


def check_tiles_fit(method: str, view: int, tile: int | str) -> None:
    """Refuse views too small for a 3x3 grid of tiles of at least MIN_TILE px, or a `tile`
    setting that does not fit the grid's cells."""
    side = tile_side(view, tile)
    if side < MIN_TILE:
        need = math.ceil(GRID * MIN_TILE / TILE_FRACTION) if tile == "auto" else GRID * MIN_TILE
        raise UserError(
            f"{method} cuts {view}-px views into a 3x3 grid of {side}-px tiles, but tiles must be at least {MIN_TILE} px; "
            f"use views of at least {need} px (data.image_size, augment.crop_size)"
        )
    if side > view // GRID:
        raise UserError(f"method.tile {side} does not fit the {view // GRID}-px cells of {view}-px views; "
                        f"use method.tile {view // GRID} or less, or larger views")


@dataclass
class JigsawConfig(MethodConfig):
    num_permutations: int = option(100, "puzzles to tell apart, chosen for maximal Hamming distance", min=2, max=10000)
    permutation_seed: int = option(0, "seed of the permutation set (part of the task, not of the run)")
    tile: Union[int, Literal["auto"]] = option("auto", "tile side in px; auto: 85% of a third of the view", min=MIN_TILE)
    channel_jitter: int = option(1, "px each colour channel of a tile may be shifted by", min=0)
    tile_grayscale: float = option(0.3, "probability that a tile is turned grey", min=0, max=1)
    tile_input: Union[int, Literal["auto"]] = option(
        "auto", "side in px the tiles are resized to for the backbone; auto: the tile side, at least 32", min=MIN_TILE)
    tile_dim: int = option(256, "per-tile embedding width before the nine are concatenated", min=1)
    head_hidden_dim: int = option(1024, "hidden width of the classifier of the concatenated tiles", min=1)


@register_method("jigsaw")
class Jigsaw(Method):
    Config = JigsawConfig
    description = "pretext: say which of N permutations shuffled the 3x3 tiles of an image (siamese tiles)"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: JigsawConfig = self.cfg
        self.tile = tile_side(self.crop_size, cfg.tile)
        self.tile_input = patch_input_side(self.tile, cfg.tile_input)
        self.register_buffer("perms", hamming_permutations(cfg.num_permutations, cfg.permutation_seed))
        self.tile_head = nn.Sequential(nn.Linear(ctx.feature_dim, cfg.tile_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Linear(TILES * cfg.tile_dim, cfg.head_hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(cfg.head_hidden_dim, cfg.num_permutations),
        )
        self.augment = ViewAugment(ctx.recipe.augment, self.crop_size)

    @classmethod
    def check_data(cls, data, recipe) -> None:
        super().check_data(data, recipe)
        check_tiles_fit(cls.name, view_side(recipe, data.image_size), recipe.method.tile)

    def make_views(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch.images
        x = self.augment(images, gen)
        tiles = cut_tiles(x, self.tile, gen, self.cfg.channel_jitter)
        puzzle = torch.randint(len(self.perms), (x.shape[0],), generator=gen, device=x.device)
        tiles = normalise_tiles(shuffle_tiles(tiles, self.perms, puzzle), gen, self.cfg.tile_grayscale)
        return resize_patches(tiles, self.tile_input), puzzle

    def embed_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, 9, C, T, T) tiles -> (N, 9 * tile_dim): the shared backbone on every tile."""
        n = tiles.shape[0]
        feats = self.backbone(tiles.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        return self.tile_head(feats).view(n, -1)

    def training_step(self, views) -> StepOutput:
        tiles, puzzle = views
        logits = self.head(self.embed_tiles(tiles))
        loss = F.cross_entropy(logits.float(), puzzle)
        acc = (logits.detach().argmax(1) == puzzle).float().mean()
        return loss, {"jigsaw_acc": acc}
