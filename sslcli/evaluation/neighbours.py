"""Nearest-neighbour pictures: one row per query, then its k nearest training images, each
captioned with class and cosine similarity, framed green (same class) or red (different)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont

GREEN, RED, BLUE = (30, 160, 60), (200, 40, 40), (40, 90, 200)
BORDER = 4
CAPTION = 30
GAP = 6


@dataclass
class Tile:
    image: torch.Tensor  # 3 x H x W uint8
    caption: str
    colour: tuple[int, int, int]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def draw_grid(rows: list[list[Tile]], cell: int = 96, header: list[str] | None = None) -> Image.Image:
    """Compose rows of tiles into one picture; every tile is `cell` pixels square plus a caption."""
    cols = max(len(r) for r in rows)
    tile_w, tile_h = cell + 2 * BORDER, cell + 2 * BORDER + CAPTION
    head_h = 22 if header else 0
    width = cols * tile_w + (cols + 1) * GAP + GAP  # extra gap after the query column
    height = head_h + len(rows) * tile_h + (len(rows) + 1) * GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(12)
    x_of = [GAP + c * (tile_w + GAP) + (GAP if c > 0 else 0) for c in range(cols)]
    if header:
        for c, text in enumerate(header[:cols]):
            draw.text((x_of[c] + tile_w // 2, head_h // 2 + 2), text, fill=(60, 60, 60), font=font, anchor="mm")
    for r, row in enumerate(rows):
        y = head_h + GAP + r * (tile_h + GAP)
        for c, tile in enumerate(row):
            x = x_of[c]
            draw.rectangle([x, y, x + tile_w - 1, y + cell + 2 * BORDER - 1], fill=tile.colour)
            picture = Image.fromarray(tile.image.permute(1, 2, 0).numpy()).resize((cell, cell), Image.BICUBIC)
            canvas.paste(picture, (x + BORDER, y + BORDER))
            lines = tile.caption.split("\n")
            for i, line in enumerate(lines[:2]):
                text = _fit(line, draw, small, tile_w - 2)
                draw.text((x + tile_w // 2, y + cell + 2 * BORDER + 8 + 13 * i), text, fill=(20, 20, 20), font=small, anchor="mm")
    return canvas


def neighbour_rows(
    query_images: torch.Tensor,
    query_labels: torch.Tensor,
    query_features: torch.Tensor,
    train_split,
    train_features: torch.Tensor,
    classes: list[str] | None,
    k: int,
) -> list[list[Tile]]:
    """Tiles for each query and its k most similar training images (features L2-normalised)."""
    sims = query_features @ train_features.T
    top_sim, top_idx = sims.topk(min(k, len(train_features)), dim=1)

    def name(label: int) -> str:
        if label < 0:
            return "unlabelled"
        return classes[label] if classes else str(label)

    rows = []
    for q in range(len(query_images)):
        q_label = int(query_labels[q])
        row = [Tile(query_images[q], f"query\n{name(q_label)}", BLUE)]
        for s, i in zip(top_sim[q].tolist(), top_idx[q].tolist()):
            image, label = train_split[i]
            same = label == q_label and label >= 0
            row.append(Tile(image, f"{name(label)}\n{s:.2f}", GREEN if same else RED))
        rows.append(row)
    return rows
