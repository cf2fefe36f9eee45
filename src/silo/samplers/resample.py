"""ReSample: Latent-DPS steps plus hard data consistency at a few steps, then stochastic resampling.

Song et al., ICLR 2024 ("Solving Inverse Problems with Latent Diffusion Models via Hard Data Consistency").
Every step is a Latent-DPS step (``zeta * grad_{z_t} ||y - A(D(z0_hat))||``). At the consistency steps (every
``every``-th step inside the middle third of the steps run, at least one), ``z0_hat`` is first optimised for
the measurement through the decoder, ``z0* = argmin_z ||y - A(D(z))||^2`` by Adam from ``z0_hat``, for at most
``iterations`` steps and stopped per image once the residual reaches the measurement noise; then the next
latent is drawn around ``z0*`` (stochastic resampling):

    z_{t'} ~ N((s^2 sqrt(abar') z0* + (1 - abar') z'_{t'}) / (s^2 + 1 - abar'),  s^2 (1 - abar') / (s^2 + 1 - abar'))
    s^2 = gamma * (1 - abar') / abar * (1 - abar / abar')

with ``abar``/``abar'`` the cumulative alphas of this step and the next, and ``z'_{t'}`` the guided sample.
Non-linear degradations (JPEG) take the straight-through gradient of their codec, as in Latent-DPS.
Cost: a Latent-DPS step, plus ``iterations`` decoder forward+backward passes at each consistency step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from silo.degradations.noise import randn_per_image
from silo.priors.prior import Prior
from silo.samplers.common import Callback, check_finite, predict, predict_x0
from silo.samplers.context import SamplingContext
from silo.samplers.latent_dps import DEFAULT_ZETA
from silo.samplers.problem import Problem


def consistency_steps(n_steps: int, every: int) -> set[int]:
    """Indices of the steps run that get hard data consistency: every ``every``-th of the middle third."""
    lo, hi = n_steps // 3, max(n_steps // 3 + 1, (2 * n_steps) // 3)
    every = max(1, int(every))
    chosen = set(range(lo, hi, every))
    return chosen or {min(lo, n_steps - 1)}


def hard_consistency(prior: Prior, problem: Problem, z0: Tensor, iterations: int, lr: float) -> tuple[Tensor, Tensor]:
    """``(z0*, iterations used per image)``: ``z0`` moved by Adam to fit ``||y - A(D(z))||^2`` through the decoder.

    Each image stops once its mean squared residual is at the measurement noise (``(2 sigma)^2`` on the [-1, 1]
    scale) or after ``iterations`` steps; a stopped image keeps its value.
    """
    y = problem.y.float()
    floor = (2 * problem.noise_sigma) ** 2
    z = z0.detach().float().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=lr)
    active = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    used = torch.zeros(z.shape[0], dtype=torch.long)
    for _ in range(int(iterations)):
        with torch.enable_grad():
            residual = (y - problem.degradation.A(prior.decode(z).float(), problem.params)).flatten(1).pow(2).mean(1)
            active = active & (residual.detach() > floor)
            if not active.any():
                break
            kept = z.detach().clone()
            optimiser.zero_grad(set_to_none=True)
            residual[active].sum().backward()
        optimiser.step()
        with torch.no_grad():
            z[~active] = kept[~active]
        used += active.cpu().long()
    return z.detach(), used


def resample_latent(
    z0_star: Tensor, z_prime: Tensor, abar: Tensor, abar_next: Tensor, gamma: float, generators: list[torch.Generator]
) -> Tensor:
    """The stochastic resampling draw of ``z`` at the next level around ``z0*`` (see the module docstring)."""
    if float(abar_next) >= 1.0:  # the last step lands on z0 itself
        return z0_star
    s2 = gamma * (1 - abar_next) / abar * (1 - abar / abar_next)
    denom = s2 + 1 - abar_next
    mean = (s2 * abar_next.sqrt() * z0_star + (1 - abar_next) * z_prime) / denom
    std = (s2 * (1 - abar_next) / denom).clamp_min(0).sqrt()
    return mean + std * randn_per_image(generators, z0_star.shape[1:]).to(mean.device)


def resample(
    ctx: SamplingContext,
    operator: torch.nn.Module | None = None,
    callback: Callback | None = None,
    *,
    zeta: float = DEFAULT_ZETA,
    gamma: float = 40.0,
    every: float = 10,
    iterations: float = 100,
    lr: float = 5e-3,
) -> Tensor:
    """ReSample latents ``z_0`` for a batch; ``operator`` is ignored (ReSample uses the pixel-space ``A``).

    ``zeta``: Latent-DPS step size; ``gamma``: weight of ``z0*`` in the resampling (larger trusts ``z0*`` more);
    ``every``: consistency every this many steps of the middle third; ``iterations``: at most this many Adam
    steps per consistency; ``lr``: their learning rate.
    """
    prior, problem, settings, scheduler = ctx.prior, ctx.problem, ctx.settings, ctx.scheduler
    alphas = scheduler.alphas_cumprod.to(prior.device).float()
    final = getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0))
    timesteps = ctx.timesteps
    hard = consistency_steps(len(timesteps), int(every))
    resampling = ctx.generators("resample")
    z = ctx.z
    for i, t in ctx.steps("ReSample"):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            guided, cond = predict(prior, z, t, ctx.prompts, settings.guidance_scale)
            z0_hat = predict_x0(scheduler, cond if ctx.cfg and settings.cfg_fix else guided, t, z)
            x0 = prior.decode(z0_hat).float()
            residual = (problem.y.float() - problem.degradation.A(x0, problem.params)).flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(zeta * residual.sum(), z)
        check_finite(grad, i, "the guidance gradient")
        z_prev = scheduler.step(guided.detach(), t, z.detach(), **ctx.step_kwargs()).prev_sample
        z = (z_prev - grad).detach()
        if i in hard:
            z0_star, _ = hard_consistency(prior, problem, z0_hat.detach(), int(iterations), lr)
            check_finite(z0_star, i, "the consistency solution")
            abar_next = alphas[int(timesteps[i + 1])] if i + 1 < len(timesteps) else final.to(alphas)
            z = resample_latent(z0_star, z, alphas[int(t)], abar_next, gamma, resampling)
        check_finite(z, i, "the latents")
        if callback is not None:
            callback({"step": i, "t": int(t), "z": z, "z0_hat": z0_hat.detach(), "loss": residual.detach()})
    return z
