"""Gaussian measurement noise.

Convention (the one place it is converted): ``sigma`` is the noise standard deviation on the [0, 1]
image scale, as users think of it. Images inside silo live in [-1, 1], where the same noise has standard
deviation ``2 * sigma``. The published SILO code and its task files use the [-1, 1] scale
(``noise_sigma=0.02`` there is ``sigma=0.01`` here).
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_model_scale(sigma: float | Tensor) -> float | Tensor:
    """Noise std on the [-1, 1] scale the images and the published operators use."""
    return 2 * sigma


def randn_per_image(generators: list[torch.Generator], shape: tuple[int, ...] | torch.Size) -> Tensor:
    """A ``len(generators) x shape`` float32 batch of standard normal noise, image ``i`` drawn from its own
    generator (on the CPU, whatever the device), so that a batch draws what single runs draw."""
    return torch.stack([torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators])


def add_noise(y: Tensor, sigma: float, generators: list[torch.Generator] | None = None) -> Tensor:
    """``y + n`` with ``n ~ N(0, (2 sigma)^2)``, one generator per image for batch-independent seeding."""
    if sigma <= 0:
        return y
    if generators is None:
        noise = torch.randn_like(y)
    else:
        if len(generators) != y.shape[0]:
            raise ValueError(f"need one generator per image: {len(generators)} for a batch of {y.shape[0]}")
        noise = randn_per_image(generators, y.shape[1:]).to(y)
    return y + to_model_scale(sigma) * noise
