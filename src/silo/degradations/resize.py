"""Bicubic resizing with MATLAB ``imresize`` semantics (anti-aliased when shrinking).

Resizing is written as two dense matrices (rows and columns), so it is exact, batched, differentiable,
works at any size, and its adjoint is simply the transposed matrices.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor


def _cubic(x: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB uses."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int, antialias: bool = True) -> Tensor:
    """Matrix ``M`` (out_size x in_size, float64) with ``resized = M @ signal`` along one axis."""
    scale = out_size / in_size
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel = lambda x: scale * _cubic(scale * x)  # noqa: E731
        kernel_width = kernel_width / scale
    else:
        kernel = _cubic
    out_idx = torch.arange(1, out_size + 1, dtype=torch.float64)
    centre = out_idx / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(centre - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    weights = kernel(centre[:, None] - idx)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # MATLAB mirrors indices at the borders (symmetric padding).
    idx0 = idx.long() - 1
    period = 2 * in_size
    idx0 = torch.remainder(idx0, period)
    idx0 = torch.where(idx0 >= in_size, period - 1 - idx0, idx0)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    matrix.scatter_add_(1, idx0, weights)
    return matrix


def imresize(x: Tensor, size: tuple[int, int], antialias: bool = True) -> Tensor:
    """Resize ``B x C x H x W`` images to ``size = (H', W')`` with MATLAB's bicubic kernel."""
    h, w = x.shape[-2:]
    rows = resize_matrix(h, size[0], antialias).to(x.device, x.dtype)
    cols = resize_matrix(w, size[1], antialias).to(x.device, x.dtype)
    return torch.einsum("oh,...hw,pw->...op", rows, x, cols)
