"""Pieces every sampler loop shares: CFG predictions, z0 estimates, operator calls, NaN checks, progress."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from silo.errors import SiloError
from silo.priors.prior import Prior, PromptEmbeddings

Callback = Callable[[dict[str, Any]], None]


def predict(
    prior: Prior, z: Tensor, t: Tensor, prompts: PromptEmbeddings, guidance_scale: float
) -> tuple[Tensor, Tensor]:
    """The UNet output with classifier-free guidance applied, and the text-conditional output alone.

    With guidance the UNet runs once on ``[uncond, cond]``; hooks that collect features see that order.
    """
    if guidance_scale == 1.0 or prompts.uncond is None:
        out = prior.denoise(z, t, prompts.cond).float()
        return out, out
    both = prior.denoise(torch.cat([z, z]), t, torch.cat([prompts.uncond, prompts.cond])).float()
    uncond, cond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond), cond


def predict_x0(scheduler, model_output: Tensor, t: Tensor, z: Tensor) -> Tensor:
    """``z0_hat`` from a UNet output of any prediction type, as the scheduler would compute it."""
    abar = scheduler.alphas_cumprod.to(z.device)[int(t)]
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (z - (1 - abar).sqrt() * model_output) / abar.sqrt()
    if kind == "v_prediction":
        return abar.sqrt() * z - (1 - abar).sqrt() * model_output
    if kind == "sample":
        return model_output
    raise SiloError(f"unsupported prediction type {kind!r}")


def apply_operator(
    operator: torch.nn.Module,
    prior: Prior,
    z0_hat: Tensor | None,
    sigma: float,
    features: list[Tensor] | None = None,
    mask: Tensor | None = None,
    size: tuple[int, int] | None = None,
    kernel: Tensor | None = None,
) -> Tensor:
    """``H(.)`` for any operator kind through ``operator.apply`` (sigma on the [0, 1] scale); each kind reads
    what it needs of these inputs and does its own noise-level conditioning."""
    from silo.operators.base import OperatorInputs, call_operator

    inputs = OperatorInputs(z0=z0_hat, features=features, noise_sigma=sigma, mask=mask, kernel=kernel, latent_size=size)
    by_tiles = getattr(prior, "apply_operator_by_tiles", None)  # a tiled prior (silo.priors.tiled)
    if by_tiles is not None:
        return by_tiles(operator, inputs)
    return call_operator(operator, inputs, prior)


def check_finite(tensor: Tensor, step: int, what: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).flatten(1).any(1).nonzero().flatten().tolist()
        raise SiloError(
            f"NaN or Inf in {what} at step {step} (images {bad} of the batch); try a smaller --eta or --steps"
        )


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of a run (restores the previous setting)."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = cudnn


def progress(iterable, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
