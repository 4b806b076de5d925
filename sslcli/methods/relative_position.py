"""Relative position (context prediction): cut a 3x3 grid of patches out of each training view,
then for every one of the 8 outer patches say where it sits relative to the centre one.
Doersch, Gupta and Efros, "Unsupervised Visual Representation Learning by Context Prediction",
ICCV 2015.

Geometry: square patches of `patch` px, `gap` px apart, each moved by its own random jitter of
up to `jitter` px in x and y; the whole grid (3 * patch + 2 * gap + 2 * jitter px) is placed at a
random position in the view. The centre patch (grid index 4) is the anchor; its 8 neighbours are
labelled 0..7 in row-major order skipping the centre (`NEIGHBOUR_OFFSETS`, as (row, col) steps):

    0 1 2
    3 . 4
    5 6 7

Every image yields all 8 (anchor, neighbour) pairs: the backbone embeds the 9 patches of every
image in one forward pass, each neighbour's embedding is concatenated to the anchor's (anchor
first) and an MLP says which of the 8 positions the neighbour came from.

Guards against the shortcuts Doersch et al. found, which solve the task without understanding
the content:
* the gap and jitter stop low-level cues (lines, edges and textures continued across patch
  borders) from giving the answer away;
* per-patch colour dropping: each patch independently becomes grayscale with probability
  `patch_grayscale` (default 0.66). Chromatic aberration tells a patch's place in the frame
  from colour fringes alone; with two thirds of the patches colourless, both patches of a pair
  keep their colour in only about one pair in nine, so the cue rarely pays, while the backbone
  still sees colour in a third of its inputs (downstream tasks use colour). Doersch et al.
  dropped 2 of the 3 channels of every patch instead; random grayscale is the gentler form
  common in later work;
* per-patch normalisation (`patch_normalize`): after the ImageNet normalisation each patch has
  its own per-channel mean subtracted, so the absolute brightness and tint of a patch (light
  falloff, vignetting, sky above and ground below) do not give away its place in the grid.

The view itself is the recipe's usual `augment` view (random resized crop to `augment.crop_size`,
flip, colour jitter, grayscale, blur, solarisation), cut into patches before normalisation. Patch geometry can
be "auto": gap about 1/16 and jitter about 1/32 of the view side, and the patch what is left of
the view after them, split in three (about 0.27 of the side: 8 px patches in a 32 px view,
17 px in a 64 px view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..data.augment import ViewAugment, normalize, random_grayscale, to_float
from ..data.images import Batch
from ..errors import UserError
from ..recipe import MethodConfig, option
from ..registry import register_method
from .base import Method, MethodContext, StepOutput, patch_input_side, resize_patches, view_side

# (row, col) step from the anchor (the centre patch) to the neighbour labelled 0..7.
NEIGHBOUR_OFFSETS: list[tuple[int, int]] = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
ANCHOR = 4  # grid index (row-major over the 3x3 grid) of the centre patch
# grid index of the neighbour labelled k
NEIGHBOUR_INDICES: list[int] = [(dr + 1) * 3 + (dc + 1) for dr, dc in NEIGHBOUR_OFFSETS]


def grid_extent(patch: int, gap: int, jitter: int) -> int:
    """Side in pixels of the square a jittered 3x3 grid can occupy: 3 * patch + 2 * gap + 2 * jitter."""
    return 3 * patch + 2 * gap + 2 * jitter


def resolve_geometry(patch: Union[int, str], gap: Union[int, str], jitter: Union[int, str],
                     side: int) -> tuple[int, int, int]:
    """(patch, gap, jitter) in pixels for views of `side` px, "auto" values filled in: gap
    round(side / 16), jitter round(side / 32), patch (side - 2 gap - 2 jitter) // 3, so that an
    all-auto grid always fits. The result may not fit: callers check with `grid_extent`."""
    g = max(1, round(side / 16)) if gap == "auto" else int(gap)
    j = round(side / 32) if jitter == "auto" else int(jitter)
    p = (side - 2 * g - 2 * j) // 3 if patch == "auto" else int(patch)
    return p, g, j


def extract_patches(images: torch.Tensor, patch: int, gap: int, jitter: int,
                    gen: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a jittered 3x3 grid of `patch`-px patches `gap` px apart out of each image.

    images: float (N, C, S, S). The grid's bounding square (`grid_extent` px) goes at a random
    position in each image and every patch moves by its own random offset in [-jitter, jitter]
    along each axis; all draws come from `gen` (on the images' device).
    Returns patches (N, 9, C, patch, patch) in row-major grid order (index 4 is the centre, the
    anchor) and origins (N, 9, 2), the integer (row, col) of each patch's top-left pixel.
    """
    if images.ndim != 4:
        raise ValueError(f"extract_patches expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    n, _, height, width = images.shape
    if height != width:
        raise ValueError(f"extract_patches needs square images, got {height}x{width}")
    if patch < 1 or gap < 0 or jitter < 0:
        raise ValueError(f"extract_patches needs patch >= 1, gap >= 0 and jitter >= 0, got {patch}, {gap}, {jitter}")
    extent = grid_extent(patch, gap, jitter)
    if extent > height:
        raise ValueError(f"a 3x3 grid of {patch}-px patches (gap {gap}, jitter {jitter}) needs {extent} px, "
                         f"but the images are {height} px")
    device = images.device
    corner = torch.randint(0, height - extent + 1, (n, 1, 2), generator=gen, device=device)
    shake = torch.randint(-jitter, jitter + 1, (n, 9, 2), generator=gen, device=device)
    cells = torch.arange(9, device=device)
    grid = torch.stack([cells // 3, cells % 3], 1) * (patch + gap)  # (9, 2) unjittered offsets
    origins = corner + jitter + grid + shake  # (N, 9, 2)
    steps = torch.arange(patch, device=device)
    rows = (origins[..., 0, None] + steps).view(n, 9, patch, 1)
    cols = (origins[..., 1, None] + steps).view(n, 9, 1, patch)
    batch = torch.arange(n, device=device).view(n, 1, 1, 1)
    patches = images.permute(0, 2, 3, 1)[batch, rows, cols]  # (N, 9, patch, patch, C)
    return patches.permute(0, 1, 4, 2, 3).contiguous(), origins


def pair_labels(n: int, device=None) -> torch.Tensor:
    """Labels of the 8n (anchor, neighbour) pairs in the order `RelativePosition` builds them:
    image by image, neighbours 0..7 within each image."""
    return torch.arange(8, device=device).repeat(n)


@dataclass
class RelativePositionConfig(MethodConfig):
    patch: Union[int, Literal["auto"]] = option(
        "auto", "side of each of the 9 patches in px; auto: what the view leaves after gap and jitter, / 3", min=1)
    gap: Union[int, Literal["auto"]] = option("auto", "px between neighbouring patches; auto: view side / 16", min=0)
    jitter: Union[int, Literal["auto"]] = option(
        "auto", "each patch moves by up to this many px in x and y; auto: view side / 32", min=0)
    patch_input: Union[int, Literal["auto"]] = option(
        "auto", "side in px the patches are resized to for the backbone; auto: the patch side, at least 32", min=1)
    patch_grayscale: float = option(0.66, "probability that a patch (each on its own) is made grayscale", min=0, max=1)
    patch_normalize: bool = option(True, "subtract each patch's own per-channel mean")
    head_hidden_dim: int = option(512, "hidden width of the position head (an MLP on the concatenated pair)", min=1)


@register_method("relative-position")
class RelativePosition(Method):
    Config = RelativePositionConfig
    description = "pretext: say where one of 8 patches around a centre patch sits (3x3 grid, gaps, jitter)"
    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: RelativePositionConfig = self.cfg
        self.patch, self.gap, self.jitter = resolve_geometry(cfg.patch, cfg.gap, cfg.jitter, self.crop_size)
        self.patch_input = patch_input_side(self.patch, cfg.patch_input)
        self.augment = ViewAugment(ctx.recipe.augment, self.crop_size)
        self.head = nn.Sequential(
            nn.Linear(2 * ctx.feature_dim, cfg.head_hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(cfg.head_hidden_dim, len(NEIGHBOUR_OFFSETS)),
        )

    @classmethod
    def check_data(cls, data, recipe) -> None:
        super().check_data(data, recipe)
        crop = recipe.augment.crop_size
        side = view_side(recipe, data.image_size)
        m = recipe.method
        patch, gap, jitter = resolve_geometry(m.patch, m.gap, m.jitter, side)
        need = grid_extent(max(patch, 1), gap, jitter)
        if patch < 1 or need > side:
            shown = f"{patch}-px patches" if m.patch != "auto" else "patches"
            fix = "lower method.patch" if m.patch != "auto" else "lower method.gap or method.jitter"
            raise UserError(
                f"relative-position needs views of at least {need} px for its 3x3 grid of {shown} "
                f"(gap {gap}, jitter {jitter}), but the views are {side} px; {fix} or raise "
                f"{'data.image_size' if crop == 'auto' else 'augment.crop_size'}")

    def _patches(self, views: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(N * 9 network-ready patches, grid order within each image; (N, 9, 2) origins)."""
        patches, origins = extract_patches(views, self.patch, self.gap, self.jitter, gen)
        x = patches.flatten(0, 1)
        x = random_grayscale(x, gen, self.cfg.patch_grayscale)
        x = normalize(x)
        if self.cfg.patch_normalize:
            x = x - x.mean((2, 3), keepdim=True)
        return resize_patches(x, self.patch_input), origins

    def make_views(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch.images
        x, _ = self._patches(self.augment.unnormalised(images, gen), gen)
        return x, pair_labels(images.shape[0], images.device)

    def shard_views(self, views, n: int):
        patches, labels = views  # nine patches and eight pair labels per image, image after image
        return distributed.share_items(patches, n), distributed.share_items(labels, n)

    def visualize(self, images: torch.Tensor):
        """Side by side for each image: its 3x3 grid of patches (one fixed draw, in colour), each neighbour
        framed green where the head places it right, red where wrong; the anchor framed grey."""
        from PIL import Image

        gen = torch.Generator(device=images.device).manual_seed(0)
        x = to_float(images)
        if x.shape[-1] != self.crop_size:
            x = F.interpolate(x, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False)
        patches, _ = extract_patches(x, self.patch, self.gap, self.jitter, gen)
        inputs = normalize(patches.flatten(0, 1))
        if self.cfg.patch_normalize:
            inputs = inputs - inputs.mean((2, 3), keepdim=True)
        inputs = resize_patches(inputs, self.patch_input)
        right = (self.logits(inputs).argmax(1) == pair_labels(len(x), x.device)).view(-1, 8).cpu()
        p, frame = self.patch, 2
        cell = p + 2 * frame + 2  # patch, its frame, and a 1-px margin on each side
        scale = max(1, 48 // p)
        stride = 3 * cell + cell // 2  # one image's grid and a space
        canvas = torch.ones(3, 3 * cell, len(x) * stride - cell // 2)
        colours = {True: (0.1, 0.75, 0.1), False: (0.85, 0.1, 0.1)}
        for i, grid in enumerate(patches.cpu()):
            for index in range(9):
                top, left = (index // 3) * cell + 1, i * stride + (index % 3) * cell + 1
                if index == ANCHOR:
                    colour = (0.5, 0.5, 0.5)
                else:
                    colour = colours[bool(right[i, NEIGHBOUR_INDICES.index(index)])]
                canvas[:, top:top + p + 2 * frame, left:left + p + 2 * frame] = torch.tensor(colour).view(3, 1, 1)
                canvas[:, top + frame:top + frame + p, left + frame:left + frame + p] = grid[index]
        pixels = (canvas.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        picture = Image.fromarray(pixels)
        return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)

    def logits(self, patches: torch.Tensor) -> torch.Tensor:
        """(8N, 8) position scores for the 8N (anchor, neighbour) pairs of N images' 9N patches."""
        f = self.backbone(patches)
        f = f.view(-1, 9, f.shape[-1])
        anchor = f[:, ANCHOR:ANCHOR + 1].expand(-1, len(NEIGHBOUR_INDICES), -1)
        neighbours = f[:, NEIGHBOUR_INDICES]
        return self.head(torch.cat([anchor, neighbours], -1).flatten(0, 1))

    def training_step(self, views) -> StepOutput:
        patches, labels = views
        logits = self.logits(patches)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return loss, {"position_acc": acc}
