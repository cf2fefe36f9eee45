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


#: the batch shape on which undeclared parameter randomness is probed
PROBE_SHAPE = (1, 3, 64, 64)


def params_differ(a: Params, b: Params) -> bool:
    """Whether two parameter dicts differ in any key or value."""

    def differs(u: Any, v: Any) -> bool:
        return not torch.equal(u, v) if torch.is_tensor(u) and torch.is_tensor(v) else u != v

    return set(a) != set(b) or any(differs(a[k], b[k]) for k in a)


class Degradation:
    """A forward operator ``A`` on ``B x C x H x W`` images in [-1, 1] plus Gaussian noise ``sigma``."""

    name: str = "degradation"

    # -- declared capabilities: callers ask these instead of testing names or classes ------------
    #: whether ``A`` is linear (PSLD and adjoint-based methods need this)
    linear: bool = True
    #: whether ``A`` can be back-propagated exactly (JPEG uses a straight-through gradient)
    differentiable: bool = True
    #: whether ``A`` reads ``params["mask"]`` and :meth:`mask` returns it (mask-aware operators take it as
    #: input; restoring a real photo needs the user's mask, since it cannot be drawn from a seed)
    uses_mask: bool = False
    #: whether ``A`` reads a blur kernel (``params["kernel"]`` or a fixed one) and :meth:`blur_kernel`
    #: returns it (kernel-aware operators read it; a user may pass ``--kernel``)
    uses_kernel: bool = False
    #: whether a real measurement cannot be restored without the user's kernel (its kernel is drawn per
    #: image, so no setting fixes it)
    needs_kernel: bool = False
    #: spatial down-scaling factor of ``A`` (image side / measurement side)
    scale: int = 1

    def __init__(self, noise_sigma: float = 0.0, **settings: Any) -> None:
        if noise_sigma < 0:
            raise SiloError(f"noise_sigma must be >= 0, got {noise_sigma}")
        self.noise_sigma = float(noise_sigma)
        self.settings = settings

    @property
    def has_blur_kernel(self) -> bool:
        """Alias of :attr:`uses_kernel` for older callers."""
        return self.uses_kernel

    @property
    def random_params(self) -> bool:
        """Whether :meth:`sample_params` draws per-image randomness, so parameter seeds matter.

        Shipped degradations declare it; a subclass that overrides ``sample_params`` without declaring it
        is probed with two seeds, so that its answer is still true.
        """
        if type(self).sample_params is Degradation.sample_params:
            return False
        return params_differ(self.sample_params(PROBE_SHAPE, [1]), self.sample_params(PROBE_SHAPE, [2]))

    def capabilities(self) -> dict[str, Any]:
        """The declared capabilities, for logs and docs."""
        return {
            "linear": self.linear,
            "differentiable": self.differentiable,
            "uses_mask": self.uses_mask,
            "uses_kernel": self.uses_kernel,
            "needs_kernel": self.needs_kernel,
            "random_params": self.random_params,
            "scale": self.scale,
        }

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
    random_params = False

    def A(self, x: Tensor, params: Params | None = None) -> Tensor:  # noqa: N802
        return x
