"""The SILO sampler: diffusion guided by a learned latent operator, never through the VAE decoder.

Each step: ``eps = UNet(z_t)``; the scheduler gives ``z_prev`` and ``z0_hat``; the operator predicts the
encoded measurement ``w_hat = H(z0_hat)`` (CNN) or ``H(UNet features)`` (readout); the per-image loss
``||w - H(.)||_2`` is differentiated w.r.t. ``z_t`` through the UNet; ``z_{t-1} = z_prev - eta * clamp(g)``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from silo.errors import SiloError
from silo.priors.prior import Prior
from silo.samplers.common import (
    Callback,
    apply_operator,
    check_finite,
    deterministic_mode,
    initial_latents,
    make_scheduler,
    predict,
    predict_x0,
    progress,
    prompt_embeddings,
    sampling_timesteps,
    step_kwargs,
)
from silo.samplers.problem import Problem, SamplerSettings, encode_measurement


def guidance_loss(w: Tensor, w_hat: Tensor) -> Tensor:
    """Per-image ``||w - w_hat||_2`` (the norm, not its square, as published; one term per image)."""
    return (w.float() - w_hat.float()).flatten(1).norm(dim=1)


def silo(
    prior: Prior,
    problem: Problem,
    settings: SamplerSettings,
    operator: torch.nn.Module | None = None,
    callback: Callback | None = None,
    show_progress: bool = True,
) -> Tensor:
    """Sample latents ``z_0`` for a batch with SILO guidance; decode them with ``prior.decode``."""
    if operator is None:
        raise SiloError("the SILO sampler needs a latent operator")
    needs_features = getattr(operator, "needs_features", False)
    with deterministic_mode(settings.deterministic):
        scheduler = make_scheduler(prior, settings)
        w = encode_measurement(prior, problem, settings.clamp_measurement)
        prompts = prompt_embeddings(prior, problem, settings)
        mask = problem.mask
        z = initial_latents(prior, problem, scheduler, settings, w)
        eta = settings.guidance_eta(*problem.image_size)
        step_generators = problem.generators(stream=3, device=prior.device)
        cfg = settings.guidance_scale != 1.0 and prompts.uncond is not None
        hooks = contextlib.nullcontext()
        if needs_features:
            from silo.operators.features import UNetFeatureHooks

            hooks = UNetFeatureHooks(prior.unet)
        with hooks as collector:
            for i, t in enumerate(progress(sampling_timesteps(scheduler, settings), show_progress, "SILO")):
                z = z.detach().requires_grad_(True)
                with torch.enable_grad():
                    if needs_features:
                        collector.clear()
                    guided, cond = predict(prior, z, t, prompts, settings.guidance_scale)
                    out = scheduler.step(guided, t, z, generator=step_generators, **step_kwargs(settings))
                    z_prev, z0_hat = out.prev_sample, out.pred_original_sample
                    if cfg and settings.cfg_fix:
                        z0_hat = predict_x0(scheduler, cond, t, z)
                    features = None
                    if needs_features:
                        # with CFG the UNet ran on [uncond, cond]: the operator reads the conditional half
                        features = [f.chunk(2)[1] if cfg else f for f in collector.features]
                    w_hat = apply_operator(operator, prior, z0_hat, problem.noise_sigma, features, mask, tuple(z.shape[-2:]),
                                           problem.blur_kernel)
                    loss = guidance_loss(w, w_hat)
                    (grad,) = torch.autograd.grad(loss.sum(), z)
                check_finite(grad, i, "the guidance gradient")
                if settings.grad_clamp is not None:
                    grad = grad.clamp(-settings.grad_clamp, settings.grad_clamp)
                z = (z_prev - eta * grad).detach()
                check_finite(z, i, "the latents")
                if callback is not None:
                    callback({"step": i, "t": int(t), "z": z, "z0_hat": z0_hat.detach(), "loss": loss.detach()})
    return z
