"""The result grid ``x | A(x)+n | output | A(output)`` with metrics written underneath."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from silo.io.images import tensor_to_pil


def _to_size(x: Tensor, size: tuple[int, int]) -> Tensor:
    if x.shape[-2:] == size:
        return x
    return F.interpolate(x, size=size, mode="nearest")


def make_grid(panels: list[tuple[str, Tensor]], lines: list[str], pad: int = 4) -> Image.Image:
    """Panels (``1 x 3 x h x w`` images in [-1, 1], shown at the largest panel's size) side by side, a
    caption above each and text lines below."""
    size = max((p.shape[-2], p.shape[-1]) for _, p in panels)
    h, w = size
    font = ImageFont.load_default()
    line_h = 12
    top = line_h + pad
    bottom = pad + line_h * len(lines) + pad
    canvas = Image.new("RGB", (len(panels) * (w + pad) + pad, top + h + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (caption, img) in enumerate(panels):
        x0 = pad + i * (w + pad)
        canvas.paste(tensor_to_pil(_to_size(img[:1].float(), size)), (x0, top))
        draw.text((x0, 2), caption, fill="black", font=font)
    for j, line in enumerate(lines):
        draw.text((pad, top + h + pad + j * line_h), line, fill="black", font=font)
    return canvas


def stack_tensor(images: list[Tensor]) -> Tensor:
    return torch.cat(images, dim=0)
