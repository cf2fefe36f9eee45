"""The degradation contract shared by every task (DeepInverse-style: ``A(x)`` plus a noise model).

A degradation may have per-image random parameters (a box position, a motion kernel). They are drawn
once by :meth:`Degradation.sample_params` from one seed per image, so that a batch gives the same
measurements as the same images run one by one, and are passed explicitly to :meth:`A`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from silo.degradations.noise import add_noise
from silo.errors import SiloError

Params = dict[str, Tensor]


def generators_for(seeds: list[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One independent generator per image."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


class Degradation:
    """A forward operator ``A`` on ``B x C x H x W`` images in [-1, 1] plus Gaussian noise ``sigma``."""

    name: str = "degradation"
    #: whether ``A`` is linear (PSLD and adjoint-based methods need this)
    linear: bool = True
    #: whether ``A`` can be back-propagated exactly (JPEG uses a straight-through gradient)
    differentiable: bool = True
    #: whether ``blur_kernel(params)`` gives the blur kernel (kernel-aware operators need one)
    has_blur_kernel: bool = False

    def __init__(self, noise_sigma: float = 0.0, **settings: Any) -> None:
        if noise_sigma < 0:
            raise SiloError(f"noise_sigma must be >= 0, got {noise_sigma}")
        self.noise_sigma = float(noise_sigma)
        self.settings = settings

    # -- per-image parameters ---------------------------------------------------------------
    def sample_params(self, shape: tuple[int, ...], seeds: list[int]) -> Params:
        """Random parameters for a batch, one seed per image. Deterministic degradations have none."""
        return {}

    # -- the operator -------------------------------------------------------------------------
    def A(self, x: Tensor, params: Params | None = None) -> Tensor:  # noqa: N802 (math name)
        raise NotImplementedError

    def __call__(self, x: Tensor, params: Params | None = None) -> Tensor:
        return self.A(x, params)

    def measure(self, x: Tensor, params: Params | None, seeds: list[int]) -> Tensor:
        """``y = A(x) + n`` with noise drawn from one generator per image (seed + 1 avoids reusing the
        parameter stream)."""
        return self.add_noise(self.A(x, params), seeds)

    def add_noise(self, y: Tensor, seeds: list[int]) -> Tensor:
        """``y + n`` with this task's noise level, one generator per image."""
        return add_noise(y, self.noise_sigma, generators_for([s + 1 for s in seeds]))

    def measurement_shape(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of ``A(x)`` for an ``height x width`` image."""
        return height, width

    def image_shape(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the image that a ``height x width`` measurement came from."""
        return height, width

    def to_image_size(self, y: Tensor) -> Tensor:
        """The measurement brought to the image's size before encoding (SR: bicubic up-sampling)."""
        return y

    def mask(self, params: Params | None) -> Tensor | None:
        """``B x 1 x H x W`` mask (1 = observed) for inpainting, else None."""
        return None

    def blur_kernel(self, params: Params | None) -> Tensor | None:
        """The blur kernel(s), ``k x k`` or ``B x k x k``, for blurs (kernel-aware operators read it), else None."""
        return None

    def check_size(self, height: int, width: int) -> None:
        """Raise :class:`SiloError` when an image of this size cannot be degraded."""

    def adjoint(self, y: Tensor, x_like: Tensor, params: Params | None = None) -> Tensor:
        """``A^T y`` for linear operators, computed exactly as a vector-Jacobian product."""
        if not self.linear:
            raise SiloError(f"task {self.name!r} is not linear: it has no adjoint")
        x = torch.zeros_like(x_like, requires_grad=True)
        with torch.enable_grad():
            out = self.A(x, params)
            (grad,) = torch.autograd.grad(out, x, grad_outputs=y)
        return grad

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "noise_sigma": self.noise_sigma, **self.settings}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.describe().items())
        return f"{type(self).__name__}({inner})"


class Identity(Degradation):
    """``A(x) = x``: denoising when ``noise_sigma > 0``, unconditional-like sampling otherwise."""

    name = "identity"

    def A(self, x: Tensor, params: Params | None = None) -> Tensor:  # noqa: N802
        return x
