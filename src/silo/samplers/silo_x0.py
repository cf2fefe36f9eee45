"""x0-space SILO: correct ``z0_hat`` with the latent operator's gradient alone (MPGD-style), no UNet backward.

Each step: ``eps = UNet(z_t)`` under ``torch.no_grad()``; ``z0_hat`` from it; one gradient step on the
per-image loss ``L = 0.5 * ||w - H(z0_hat)||^2`` w.r.t. ``z0_hat`` only (``w = E(y)``, encoded once):
``z0 = z0_hat - c * clamp(grad)``; then the scheduler's own step as if the denoiser had predicted ``z0``
(DDPM: the posterior ``q(z_{t-1} | z_t, z0)``; DDIM: its deterministic update). Cost per step: one UNet
forward plus the operator's forward and backward.

Why the squared loss (SILO proper uses the norm): its gradient scales with the residual, so ``c`` is a
fraction of a Gauss-Newton step (``c = 1`` with ``H`` the identity lands on ``w``) and needs no
per-timestep rescaling. ``settings.grad_clamp`` (elementwise) applies as in SILO; ``settings.eta`` does not.
Operators that read UNet features (readout) have no gradient w.r.t. ``z0_hat``: the registry refuses them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from silo.errors import SiloError
from silo.samplers.common import Callback, apply_operator, check_finite, predict, predict_x0
from silo.samplers.context import SamplingContext

#: tuned on silo-tiny's training crops (sr4, gaussian_blur, inpaint_center, jpeg): mean PSNR 24.05 / 24.23 /
#: 24.33 dB at step 0.5 / 1 / 2 (docs/results.md)
DEFAULT_STEP = 2.0


def silo_x0(
    ctx: SamplingContext,
    operator: torch.nn.Module | None = None,
    callback: Callback | None = None,
    *,
    step: float = DEFAULT_STEP,
) -> Tensor:
    """x0-space SILO latents ``z_0`` for a batch.

    ``step``: the correction size ``c`` in ``z0 = z0_hat - c * grad_{z0_hat} 0.5 ||w - H(z0_hat)||^2`` (default 2,
    tuned on silo-tiny).
    """
    if operator is None:
        raise SiloError("x0-space SILO needs a latent operator")
    if getattr(operator, "needs_features", False):
        raise SiloError(
            "x0-space SILO needs an operator on z0 (cnn or preserve); a readout operator reads UNet "
            "features, which have no gradient w.r.t. z0"
        )
    prior, problem, settings, scheduler = ctx.prior, ctx.problem, ctx.settings, ctx.scheduler
    stepper = type(scheduler).from_config(scheduler.config, prediction_type="sample")
    stepper.set_timesteps(settings.steps, device=prior.device)
    w, mask, kernel = ctx.w, problem.mask, problem.blur_kernel
    z = ctx.z
    for i, t in ctx.steps("SILO-x0"):
        with torch.no_grad():
            guided, cond = predict(prior, z, t, ctx.prompts, settings.guidance_scale)
        z0_hat = predict_x0(scheduler, guided, t, z)
        seen = predict_x0(scheduler, cond, t, z) if ctx.cfg and settings.cfg_fix else z0_hat
        with torch.enable_grad():
            z0_var = seen.detach().requires_grad_(True)
            w_hat = apply_operator(operator, prior, z0_var, problem.noise_sigma, None, mask, ctx.latent_size, kernel)
            loss = 0.5 * (w.float() - w_hat.float()).flatten(1).pow(2).sum(1)
            (grad,) = torch.autograd.grad(loss.sum(), z0_var)
        check_finite(grad, i, "the guidance gradient")
        if settings.grad_clamp is not None:
            grad = grad.clamp(-settings.grad_clamp, settings.grad_clamp)
        z0 = z0_hat - step * grad
        z = stepper.step(z0, t, z, **ctx.step_kwargs()).prev_sample.detach()
        check_finite(z, i, "the latents")
        if callback is not None:
            callback({"step": i, "t": int(t), "z": z, "z0_hat": z0_hat, "loss": loss.detach().sqrt() * 2**0.5})
    return z
