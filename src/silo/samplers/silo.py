"""The SILO sampler: diffusion guided by a learned latent operator, never through the VAE decoder.

Each step: ``eps = UNet(z_t)``; the scheduler gives ``z_prev``; ``z0_hat`` follows from ``eps``; the operator
predicts the encoded measurement ``w_hat = H(z0_hat)`` (CNN) or ``H(UNet features)`` (readout); the per-image
loss ``||w - H(.)||_2`` is differentiated w.r.t. ``z_t`` through the UNet; ``z_{t-1} = z_prev - eta * clamp(g)``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from silo.errors import SiloError
from silo.samplers.common import Callback, apply_operator, check_finite, predict, predict_x0
from silo.samplers.context import SamplingContext


def guidance_loss(w: Tensor, w_hat: Tensor) -> Tensor:
    """Per-image ``||w - w_hat||_2`` (the norm, not its square, as published; one term per image)."""
    return (w.float() - w_hat.float()).flatten(1).norm(dim=1)


def silo(ctx: SamplingContext, operator: torch.nn.Module | None = None, callback: Callback | None = None) -> Tensor:
    """Latents ``z_0`` for a batch with SILO guidance; the step size is ``settings.eta``."""
    if operator is None:
        raise SiloError("the SILO sampler needs a latent operator")
    prior, problem, settings, scheduler = ctx.prior, ctx.problem, ctx.settings, ctx.scheduler
    needs_features = getattr(operator, "needs_features", False)
    w, mask, kernel = ctx.w, problem.mask, problem.blur_kernel
    eta = settings.guidance_eta(*problem.image_size)
    z = ctx.z
    hooks = contextlib.nullcontext()
    if needs_features:
        from silo.operators.features import UNetFeatureHooks

        hooks = UNetFeatureHooks(prior.unet)
    with hooks as collector:
        for i, t in ctx.steps("SILO"):
            z = z.detach().requires_grad_(True)
            with torch.enable_grad():
                if needs_features:
                    collector.clear()
                guided, cond = predict(prior, z, t, ctx.prompts, settings.guidance_scale)
                z0_hat = predict_x0(scheduler, cond if ctx.cfg and settings.cfg_fix else guided, t, z)
                features = None
                if needs_features:  # with CFG the UNet ran on [uncond, cond]: the operator reads the conditional half
                    features = [f.chunk(2)[1] if ctx.cfg else f for f in collector.features]
                w_hat = apply_operator(
                    operator, prior, z0_hat, problem.noise_sigma, features, mask, ctx.latent_size, kernel
                )
                loss = guidance_loss(w, w_hat)
                (grad,) = torch.autograd.grad(loss.sum(), z)
            z_prev = scheduler.step(guided.detach(), t, z.detach(), **ctx.step_kwargs()).prev_sample
            check_finite(grad, i, "the guidance gradient")
            if settings.grad_clamp is not None:
                grad = grad.clamp(-settings.grad_clamp, settings.grad_clamp)
            z = (z_prev - eta * grad).detach()
            check_finite(z, i, "the latents")
            if callback is not None:
                callback({"step": i, "t": int(t), "z": z, "z0_hat": z0_hat.detach(), "loss": loss.detach()})
    return z
