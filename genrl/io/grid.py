"""Captioned grids of videos: what `genrl data preview` and run samples show a person."""

from __future__ import annotations

import textwrap

import numpy as np
import torch

from .video import to_uint8, upscale


def captioned_grid(videos: torch.Tensor, captions: list[str], cols: int = 4, scale: int = 4) -> torch.Tensor:
    """Tile videos (B, F, 3, H, W) into one video with each caption under its tile.

    Returns (F, 3, H', W') in [0, 1].
    """
    from PIL import Image, ImageDraw, ImageFont

    B, F, _, H, W = videos.shape
    cols = max(1, min(cols, B))
    rows = (B + cols - 1) // cols
    tile_w = W * scale
    font = ImageFont.load_default(size=11)
    chars = max(8, tile_w // 6)
    wrapped = ["\n".join(textwrap.wrap(c, chars)[:4]) for c in captions]
    text_h = 14 * max(1, max((w.count("\n") + 1 for w in wrapped), default=1)) + 4
    cell_h, cell_w = H * scale + text_h, tile_w + 6
    label = Image.new("RGB", (cols * cell_w, rows * cell_h), (20, 20, 20))
    draw = ImageDraw.Draw(label)
    for i, text in enumerate(wrapped):
        r, c = divmod(i, cols)
        draw.multiline_text((c * cell_w + 3, r * cell_h + H * scale + 2), text, fill=(230, 230, 230), font=font, spacing=2)
    base = np.asarray(label).copy()
    frames = to_uint8(upscale(videos.reshape(B * F, 3, H, W), scale)).reshape(B, F, H * scale, tile_w, 3)
    out = np.repeat(base[None], F, axis=0)
    for i in range(B):
        r, c = divmod(i, cols)
        y, x = r * cell_h, c * cell_w + 3
        out[:, y : y + H * scale, x : x + tile_w] = frames[i]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0
