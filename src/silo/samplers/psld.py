"""PSLD: Latent-DPS plus a "gluing" term that keeps ``z0_hat`` a fixed point of decode -> project -> encode.

Rout et al., NeurIPS 2023. Per step, with ``x = D(z0_hat)``:
``objective = zeta * ||y - A(x)|| + gamma * ||z0_hat - E(A^T y + (I - A^T A) x)||^2`` (per image, summed),
differentiated w.r.t. ``z_t`` through the UNet, the decoder and the encoder. ``A^T`` is the degradation's
exact adjoint (a vector-Jacobian product), so only linear degradations qualify: JPEG is refused.
``E`` is the encoder's posterior mean times the scaling factor (deterministic gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor

from silo.degradations.base import Degradation, Params
from silo.errors import SiloError
from silo.samplers.common import Callback
from silo.samplers.context import SamplingContext
from silo.samplers.latent_dps import DEFAULT_ZETA, decoder_guided

#: tuned like DEFAULT_ZETA (sr4, gaussian_blur, inpaint_center; no jpeg): mean PSNR 21.23 / 20.95 / 19.98 dB at
#: gamma 0.001 / 0.01 / 0.1 at zeta 0.25 (at zeta 4: 20.24 / 20.89 / 20.57 / 12.13 with gamma 1): the gluing
#: term hardly helps here; not swept at the shared zeta 0.125 itself
DEFAULT_GAMMA = 0.001


class _NormalOperator(torch.autograd.Function):
    """``A^T A x`` through the exact adjoint; it is self-adjoint, so its backward is itself."""

    @staticmethod
    def forward(ctx, x: Tensor, degradation: Degradation, params: Params) -> Tensor:
        ctx.degradation, ctx.params = degradation, params
        return degradation.adjoint(degradation.A(x, params), x, params)

    @staticmethod
    def backward(ctx, grad: Tensor):
        deg, params = ctx.degradation, ctx.params
        return deg.adjoint(deg.A(grad, params), grad, params), None, None


def psld(
    ctx: SamplingContext,
    operator: torch.nn.Module | None = None,
    callback: Callback | None = None,
    *,
    zeta: float = DEFAULT_ZETA,
    gamma: float = DEFAULT_GAMMA,
) -> Tensor:
    """PSLD latents ``z_0`` for a batch of linear problems; ``operator`` is ignored.

    ``zeta``: step size of the LDPS term (default 0.125, tuned on silo-tiny); ``gamma``: weight of the gluing
    term (default 0.001, tuned on silo-tiny).
    """
    prior, problem = ctx.prior, ctx.problem
    deg = problem.degradation
    if not deg.linear:
        raise SiloError(
            f"PSLD needs a linear degradation (it uses A^T); task {deg.name!r} is not linear: use ldps or silo"
        )
    x_like = torch.zeros(problem.batch, problem.y.shape[1], *problem.image_size, device=problem.y.device)
    with torch.no_grad():
        a_t_y = deg.adjoint(problem.y.float(), x_like, problem.params)

    def objective(z0_hat: Tensor) -> tuple[Tensor, Tensor]:
        x0 = prior.decode(z0_hat).float()
        residual = (problem.y.float() - deg.A(x0, problem.params)).flatten(1).norm(dim=1)
        projected = a_t_y + x0 - _NormalOperator.apply(x0, deg, problem.params)
        glued = prior.encode(projected, sample=False).float()
        gluing = (z0_hat.float() - glued).flatten(1).pow(2).sum(1)
        return zeta * residual.sum() + gamma * gluing.sum(), residual

    return decoder_guided(ctx, objective, "PSLD", callback)
