"""Blur degradations: a fixed Gaussian kernel or a seeded random motion kernel, reflection padding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from silo.degradations.base import Degradation, Params
from silo.errors import SiloError


def gaussian_kernel(size: int, std: float) -> Tensor:
    """Normalised ``size x size`` Gaussian kernel."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * std**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()


def motion_kernel(size: int, intensity: float, generator: torch.Generator) -> Tensor:
    """A random camera-shake kernel: a smooth random trajectory rasterised onto a ``size x size`` grid.

    ``intensity`` in [0, 1] controls how erratic and long the trajectory is.
    """
    steps = 4 * size
    max_len = 0.75 * size * (0.3 + 0.7 * intensity)
    angle = torch.rand((), generator=generator).item() * 2 * math.pi
    velocity = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    pos = torch.zeros(2, dtype=torch.float64)
    points = [pos.clone()]
    step_len = max_len / steps
    for _ in range(steps - 1):
        turn = torch.randn(2, generator=generator, dtype=torch.float64) * intensity
        velocity = velocity + turn * 0.5
        velocity = velocity / velocity.norm().clamp_min(1e-8)
        pos = pos + velocity * step_len
        points.append(pos.clone())
    traj = torch.stack(points)
    traj = traj - traj.mean(0)  # centre the trajectory so the blur does not shift the image
    traj = traj + (size - 1) / 2
    traj = traj.clamp(0, size - 1.0001)
    kernel = torch.zeros(size, size, dtype=torch.float64)
    base = traj.floor().long()
    frac = traj - base
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        wy = frac[:, 0] if dy else 1 - frac[:, 0]
        wx = frac[:, 1] if dx else 1 - frac[:, 1]
        yy = (base[:, 0] + dy).clamp(max=size - 1)
        xx = (base[:, 1] + dx).clamp(max=size - 1)
        kernel.index_put_((yy, xx), wy * wx, accumulate=True)
    return (kernel / kernel.sum()).float()


def blur(x: Tensor, kernels: Tensor, padding: str = "reflect") -> Tensor:
    """Convolve each image of ``x`` (B x C x H x W) with its own kernel (B x k x k or k x k), per channel,
    padding the borders by ``padding`` (an ``F.pad`` mode)."""
    b, c, h, w = x.shape
    if kernels.dim() == 2:
        kernels = kernels.expand(b, *kernels.shape)
    if kernels.shape[0] != b:
        raise SiloError(f"{kernels.shape[0]} blur kernels for a batch of {b} images")
    k = kernels.shape[-1]
    pad = k // 2
    if padding == "reflect" and (pad >= h or pad >= w):
        raise SiloError(f"image {w}x{h} is too small for a {k}x{k} blur kernel with reflection padding")
    weight = kernels.to(x).repeat_interleave(c, dim=0)[:, None]  # (B*C) x 1 x k x k
    xp = F.pad(x.reshape(1, b * c, h, w), (pad, k - 1 - pad, pad, k - 1 - pad), mode=padding)
    # conv2d is a correlation; flip to convolve (matters only for asymmetric motion kernels)
    out = F.conv2d(xp, weight.flip(-1, -2), groups=b * c)
    return out.reshape(b, c, h, w)


class _Blur(Degradation):
    kernel_size: int
    uses_kernel = True

    def blur_kernel(self, params: Params | None) -> Tensor | None:
        return (params or {}).get("kernel", getattr(self, "kernel", None))

    def check_size(self, height: int, width: int) -> None:
        if self.kernel_size // 2 >= min(height, width):
            raise SiloError(
                f"image {width}x{height} is too small for the {self.kernel_size}x{self.kernel_size} blur kernel "
                f"(needs more than {self.kernel_size // 2} px a side)"
            )


class GaussianBlur(_Blur):
    name = "gaussian_blur"
    #: the kernel is fixed by the settings, so a measurement can be restored without the user's kernel
    needs_kernel = False
    random_params = False

    def __init__(self, kernel_size: int = 61, std: float = 3.0, noise_sigma: float = 0.0) -> None:
        if kernel_size < 1 or std <= 0:
            raise SiloError(f"gaussian blur needs kernel_size >= 1 and std > 0, got {kernel_size}, {std}")
        super().__init__(noise_sigma, kernel_size=int(kernel_size), std=float(std))
        self.kernel_size = int(kernel_size)
        self.kernel = gaussian_kernel(self.kernel_size, float(std))

    def A(self, x: Tensor, params: Params | None = None) -> Tensor:  # noqa: N802
        kernel = (params or {}).get("kernel", self.kernel)
        return blur(x, kernel)


class MotionBlur(_Blur):
    """Motion blur with a random kernel drawn per image from its seed (or given as ``params['kernel']``)."""

    name = "motion_blur"
    #: each image has its own random kernel: a real measurement needs the user's kernel
    needs_kernel = True
    random_params = True

    def __init__(self, kernel_size: int = 61, intensity: float = 0.5, noise_sigma: float = 0.0) -> None:
        if kernel_size < 3 or not 0 <= intensity <= 1:
            raise SiloError(
                f"motion blur needs kernel_size >= 3 and 0 <= intensity <= 1, got {kernel_size}, {intensity}"
            )
        super().__init__(noise_sigma, kernel_size=int(kernel_size), intensity=float(intensity))
        self.kernel_size = int(kernel_size)
        self.intensity = float(intensity)

    def sample_params(self, shape: tuple[int, ...], seeds: list[int]) -> Params:
        kernels = [
            motion_kernel(self.kernel_size, self.intensity, torch.Generator().manual_seed(int(s))) for s in seeds
        ]
        return {"kernel": torch.stack(kernels)}

    def A(self, x: Tensor, params: Params | None = None) -> Tensor:  # noqa: N802
        if not params or "kernel" not in params:
            raise SiloError("motion blur needs its kernel: call sample_params(...) or pass a --kernel file")
        return blur(x, params["kernel"])
