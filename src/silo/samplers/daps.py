"""Decoupled annealing (DAPS): Latent-DAPS through the decoder, and ``silo_daps`` through the latent operator.

Latent-DAPS (Zhang et al., CVPR 2025) anneals the noise level over the steps run. At each level ``t``:

1. ``z0_hat``: the probability-flow ODE from ``z_t`` to 0 in ``ode_steps`` deterministic (DDIM) steps, the last
   one the Tweedie estimate; no gradient, so no UNet backward.
2. ``langevin_steps`` Langevin steps on ``z0`` from ``z0_hat``, targeting
   ``exp(-||r(z0)||^2 / (2 beta^2) - ||z0 - z0_hat||^2 / (2 (rho sigma_t)^2))`` with ``sigma_t`` the level's
   noise-to-signal ratio ``sqrt((1 - abar_t) / abar_t)``. The step is ``lr / (1 / r_t^2 + 1 / beta^2)``: the
   inverse of the target's curvature when the residual's Jacobian is the identity, so ``lr`` is a fraction
   of a Newton step for both terms at every level and needs no schedule of its own.
3. Re-noise to the next level: ``z_{t'} = sqrt(abar') z0 + sqrt(1 - abar') n``; the last level returns ``z0``.

``daps``: ``r(z0) = y - A(D(z0))`` in pixels (beta on the [-1, 1] scale): each Langevin step is a decoder
forward and backward. ``silo_daps``: ``r(z0) = w - H(z0)`` with SILO's latent operator and ``w = E(y)``
encoded once: a level costs ``ode_steps`` UNet forwards and ``langevin_steps`` operator passes, with neither a
UNet backward nor the decoder. Operators that read UNet features (readout) have no ``z0`` to read: the
registry refuses them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from silo.degradations.noise import randn_per_image
from silo.errors import SiloError
from silo.samplers.common import Callback, apply_operator, check_finite, predict, predict_x0
from silo.samplers.context import SamplingContext

#: ``residual(z0) -> per-image squared residual norm``, differentiable w.r.t. ``z0``
Residual = Callable[[Tensor], Tensor]


def _randn(generators: list[torch.Generator], like: Tensor) -> Tensor:
    return randn_per_image(generators, like.shape[1:]).to(like.device)


def ode_estimate(ctx: SamplingContext, z: Tensor, t: Tensor, ode_steps: int) -> Tensor:
    """``z0_hat`` from ``z_t``: ``ode_steps`` deterministic DDIM steps of the probability-flow ODE toward 0."""
    alphas = ctx.scheduler.alphas_cumprod.to(z.device).float()
    levels = torch.linspace(float(t), 0.0, max(1, int(ode_steps)) + 1)[:-1].round().long().tolist()
    with torch.no_grad():
        for j, level in enumerate(levels):
            tj = torch.tensor(level, device=z.device)
            guided, _ = predict(ctx.prior, z, tj, ctx.prompts, ctx.settings.guidance_scale)
            z0 = predict_x0(ctx.scheduler, guided, tj, z).float()
            if j == len(levels) - 1:
                return z0
            abar, abar_next = alphas[level], alphas[levels[j + 1]]
            eps = (z - abar.sqrt() * z0) / (1 - abar).sqrt()
            z = abar_next.sqrt() * z0 + (1 - abar_next).sqrt() * eps
    return z0


def langevin(
    z0_hat: Tensor, residual: Residual, r: float, beta: float, lr: float, steps: int, generators: list[torch.Generator]
) -> tuple[Tensor, Tensor]:
    """``(z0, per-image residual norm)`` after ``steps`` Langevin steps (see the module docstring)."""
    step = lr / (1.0 / r**2 + 1.0 / beta**2)
    z0 = z0_hat.detach().clone()
    norm = torch.zeros(z0.shape[0], device=z0.device)
    for _ in range(int(steps)):
        with torch.enable_grad():
            var = z0.requires_grad_(True)
            squared = residual(var)
            (grad,) = torch.autograd.grad(0.5 * squared.sum() / beta**2, var)
        norm = squared.detach().sqrt()
        grad = grad + (z0.detach() - z0_hat) / r**2
        z0 = (z0.detach() - step * grad + (2 * step) ** 0.5 * _randn(generators, z0)).detach()
    return z0, norm


def annealed(
    ctx: SamplingContext,
    residual: Residual,
    desc: str,
    callback: Callback | None,
    *,
    ode_steps: float,
    langevin_steps: float,
    lr: float,
    beta: float,
    rho: float,
) -> Tensor:
    """The DAPS loop over the levels run, for any differentiable residual of ``z0``."""
    if beta <= 0 or rho <= 0 or lr < 0:
        raise SiloError(f"{desc}: beta and rho must be > 0 and lr >= 0 (got beta {beta}, rho {rho}, lr {lr})")
    alphas = ctx.scheduler.alphas_cumprod.to(ctx.prior.device).float()
    timesteps = ctx.timesteps
    mcmc, renoise = ctx.generators("langevin"), ctx.generators("renoise")
    z = ctx.z.float()
    for i, t in ctx.steps(desc):
        z0_hat = ode_estimate(ctx, z, t, int(ode_steps))
        check_finite(z0_hat, i, "the ODE estimate")
        sigma = float(((1 - alphas[int(t)]) / alphas[int(t)]).sqrt())
        z0, norm = langevin(z0_hat, residual, rho * sigma, beta, lr, int(langevin_steps), mcmc)
        check_finite(z0, i, "the Langevin samples")
        if i + 1 < len(timesteps):
            abar = alphas[int(timesteps[i + 1])]
            z = abar.sqrt() * z0 + (1 - abar).sqrt() * _randn(renoise, z0)
        else:
            z = z0
        if callback is not None:
            callback({"step": i, "t": int(t), "z": z, "z0_hat": z0_hat, "loss": norm})
    return z


def daps(
    ctx: SamplingContext,
    operator: torch.nn.Module | None = None,
    callback: Callback | None = None,
    *,
    lr: float = 0.5,
    beta: float = 0.05,
    rho: float = 1.0,
    langevin_steps: float = 5,
    ode_steps: float = 1,
) -> Tensor:
    """Latent-DAPS latents ``z_0`` for a batch; ``operator`` is ignored (the likelihood uses the decoder and ``A``).

    ``lr``: Langevin step as a fraction of the target's inverse curvature; ``beta``: measurement noise std
    assumed by the likelihood ([-1, 1] pixel scale); ``rho``: the tie of ``z0`` to ``z0_hat`` in units of
    the level's noise; ``langevin_steps``, ``ode_steps``: steps per level.
    """
    prior, problem = ctx.prior, ctx.problem
    y = problem.y.float()

    def residual(z0: Tensor) -> Tensor:
        return (y - problem.degradation.A(prior.decode(z0).float(), problem.params)).flatten(1).pow(2).sum(1)

    return annealed(
        ctx, residual, "DAPS", callback, ode_steps=ode_steps, langevin_steps=langevin_steps, lr=lr, beta=beta, rho=rho
    )


def silo_daps(
    ctx: SamplingContext,
    operator: torch.nn.Module | None = None,
    callback: Callback | None = None,
    *,
    lr: float = 0.5,
    beta: float = 0.1,
    rho: float = 1.0,
    langevin_steps: float = 2,
    ode_steps: float = 1,
) -> Tensor:
    """Annealed SILO latents ``z_0``: DAPS's annealing with the likelihood ``||w - H(z0)||^2`` in latent space.

    Options as :func:`daps`; ``beta`` is on the scale of the encoded measurement ``w``. Two Langevin steps at
    ``lr`` 0.5 matched five on silo-tiny's training crops (sr4, Gaussian blur, centre inpainting, from noise)
    and keep a level within 1.2x a UNet forward on Stable Diffusion 1.5 (``docs/results.md``).
    """
    if operator is None:
        raise SiloError("silo_daps needs a latent operator")
    if getattr(operator, "needs_features", False):
        raise SiloError(
            "silo_daps needs an operator on z0 (cnn or preserve); a readout operator reads UNet "
            "features of a pass at z_t, not z0"
        )
    prior, problem = ctx.prior, ctx.problem
    w, mask, kernel, size = ctx.w.float(), problem.mask, problem.blur_kernel, ctx.latent_size

    def residual(z0: Tensor) -> Tensor:
        w_hat = apply_operator(operator, prior, z0, problem.noise_sigma, None, mask, size, kernel)
        return (w - w_hat.float()).flatten(1).pow(2).sum(1)

    return annealed(
        ctx,
        residual,
        "SILO-DAPS",
        callback,
        ode_steps=ode_steps,
        langevin_steps=langevin_steps,
        lr=lr,
        beta=beta,
        rho=rho,
    )
