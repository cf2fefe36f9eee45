"""Latent-DPS (LDPS): diffusion posterior sampling in latent space, guided through the VAE decoder.

The peer SILO is compared against (Chung et al., ICLR 2023, applied to latents as defined in the PSLD
paper). Each step differentiates the pixel-space residual ``||y - A(D(z0_hat))||`` (per image, the norm,
not its square) w.r.t. ``z_t`` through the UNet *and* the decoder:
``z_{t-1} = z_prev - zeta * grad``. That decoder backward every step is the cost SILO avoids.

Step size: the keyword-only ``zeta`` (not ``settings.eta``, which is SILO's own; ``settings.grad_clamp`` is
SILO's too: the published LDPS does not clamp). JPEG gets the straight-through gradient of its codec.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from silo.priors.prior import Prior
from silo.samplers.common import Callback, check_finite, predict, predict_x0
from silo.samplers.context import SamplingContext
from silo.samplers.problem import Problem

#: tuned on silo-tiny's training crops (16 x 64 px; sr4, gaussian_blur, inpaint_center, jpeg; 50 DDIM steps;
#: each task at its SILO card's warm start): mean PSNR 22.48 / 22.80 / 22.63 / 21.29 dB at zeta 0.0625 / 0.125 /
#: 0.25 / 4 (scripts/compare_silo_tiny.sh tune; docs/results.md)
DEFAULT_ZETA = 0.125

#: ``objective(z0_hat) -> (scalar to differentiate, per-image measurement residual norm)``
Objective = Callable[[Tensor], tuple[Tensor, Tensor]]


def measurement_residual(prior: Prior, problem: Problem, z0_hat: Tensor) -> Tensor:
    """Per-image ``||y - A(D(z0_hat))||_2`` in pixel space, differentiable through the decoder."""
    x0 = prior.decode(z0_hat).float()
    return (problem.y.float() - problem.degradation.A(x0, problem.params)).flatten(1).norm(dim=1)


def decoder_guided(ctx: SamplingContext, objective: Objective, desc: str, callback: Callback | None) -> Tensor:
    """The loop LDPS and PSLD share: ``z_{t-1} = z_prev - grad_{z_t} objective(z0_hat(z_t))``."""
    prior, settings, scheduler = ctx.prior, ctx.settings, ctx.scheduler
    z = ctx.z
    for i, t in ctx.steps(desc):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            guided, cond = predict(prior, z, t, ctx.prompts, settings.guidance_scale)
            z0_hat = predict_x0(scheduler, cond if ctx.cfg and settings.cfg_fix else guided, t, z)
            total, residual = objective(z0_hat)
            (grad,) = torch.autograd.grad(total, z)
        z_prev = scheduler.step(guided.detach(), t, z.detach(), **ctx.step_kwargs()).prev_sample
        check_finite(grad, i, "the guidance gradient")
        z = (z_prev - grad).detach()
        check_finite(z, i, "the latents")
        if callback is not None:
            callback({"step": i, "t": int(t), "z": z, "z0_hat": z0_hat.detach(), "loss": residual.detach()})
    return z


def latent_dps(
    ctx: SamplingContext,
    operator: torch.nn.Module | None = None,
    callback: Callback | None = None,
    *,
    zeta: float = DEFAULT_ZETA,
) -> Tensor:
    """Latent-DPS latents ``z_0`` for a batch; ``operator`` is ignored (LDPS uses the pixel-space ``A``).

    ``zeta``: step size on ``grad_{z_t} ||y - A(D(z0_hat))||`` (default 0.125, tuned on silo-tiny).
    """
    prior, problem = ctx.prior, ctx.problem

    def objective(z0_hat: Tensor) -> tuple[Tensor, Tensor]:
        residual = measurement_residual(prior, problem, z0_hat)
        return zeta * residual.sum(), residual

    return decoder_guided(ctx, objective, "LDPS", callback)
