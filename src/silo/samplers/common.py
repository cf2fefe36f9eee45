"""Pieces every sampler loop shares: schedulers, initial noise, CFG predictions, operator calls, NaN checks."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from silo.degradations.noise import to_model_scale
from silo.errors import SiloError
from silo.priors.prior import Prior, PromptEmbeddings
from silo.samplers.problem import Problem, SamplerSettings

Callback = Callable[[dict[str, Any]], None]


def make_scheduler(prior: Prior, settings: SamplerSettings):
    """A fresh scheduler of the chosen kind from the prior's own scheduler config, timesteps set."""
    from diffusers import DDIMScheduler, DDPMScheduler

    kinds = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
    if settings.scheduler not in kinds:
        raise SiloError(f"unknown scheduler {settings.scheduler!r} (choose from {', '.join(kinds)})")
    train_steps = int(prior.scheduler.config.num_train_timesteps)
    if not 1 <= settings.steps <= train_steps:
        raise SiloError(f"steps must be in 1..{train_steps}, got {settings.steps}")
    # latents are not images: never clip or threshold z0_hat (a config that omits clip_sample means True)
    scheduler = kinds[settings.scheduler].from_config(prior.scheduler.config, clip_sample=False, thresholding=False)
    scheduler.set_timesteps(settings.steps, device=prior.device)
    return scheduler


def step_kwargs(settings: SamplerSettings) -> dict[str, Any]:
    """Extra arguments of ``scheduler.step`` for the chosen scheduler (DDIM's own stochasticity)."""
    return {"eta": settings.ddim_eta} if settings.scheduler == "ddim" else {}


def initial_latents(prior: Prior, problem: Problem, scheduler, settings: SamplerSettings | None = None,
                    w: Tensor | None = None) -> Tensor:
    """The first ``z_T``: pure noise, or with ``settings.start_strength < 1`` the encoded measurement ``w``
    (encoded here unless given) noised to the first timestep that ``sampling_timesteps`` keeps (an
    SDEdit-style warm start)."""
    h, w_ = problem.image_size
    shape = (prior.latent_channels, h // prior.vae_scale, w_ // prior.vae_scale)
    z = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in problem.generators(stream=1)])
    z = z.to(prior.device)
    if settings is None or settings.start_strength >= 1.0:
        return z * scheduler.init_noise_sigma
    from silo.samplers.problem import encode_measurement

    t0 = sampling_timesteps(scheduler, settings)[:1].repeat(z.shape[0])
    if w is None:
        w = encode_measurement(prior, problem, settings.clamp_measurement)
    return scheduler.add_noise(w.float(), z, t0)


def sampling_timesteps(scheduler, settings: SamplerSettings) -> Tensor:
    """The timesteps run: all of them, or the last ``settings.steps_run``."""
    if not 0.0 < settings.start_strength <= 1.0:
        raise SiloError(f"start_strength must be in (0, 1], got {settings.start_strength}")
    keep = min(settings.steps_run, len(scheduler.timesteps))
    return scheduler.timesteps[len(scheduler.timesteps) - keep :]


def prompt_embeddings(prior: Prior, problem: Problem, settings: SamplerSettings) -> PromptEmbeddings:
    if settings.prompt_embeds is not None:
        return settings.prompt_embeds
    return prior.encode_prompt(settings.prompt, problem.batch, settings.negative_prompt, settings.guidance_scale)


def predict(prior: Prior, z: Tensor, t: Tensor, prompts: PromptEmbeddings, guidance_scale: float) -> tuple[Tensor, Tensor]:
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
    """``H(.)`` for any operator kind, with its noise-level conditioning (sigma on the [0, 1] scale); ``kernel``
    is the degradation's blur kernel, passed to kernel-aware operators only."""
    batch = z0_hat.shape[0] if z0_hat is not None else features[0].shape[0]
    use_mask = mask if getattr(operator.config, "mask_channel", False) else None
    extra = {}
    if getattr(operator, "needs_blur_kernel", False):
        if kernel is None:
            raise SiloError(f"{type(operator).__name__} is kernel-aware, but this problem has no blur kernel "
                            f"(a blur task with --kernel, or a seeded random kernel)")
        extra["kernel"] = kernel
    if not getattr(operator, "uses_unet_sigma_embedding", True):
        level = torch.full((batch,), float(to_model_scale(sigma)), device=prior.device)
        return operator(z0_hat.float(), None, mask=use_mask, noise_level=level)
    sigma_emb = None
    if getattr(operator.config, "sigma_conditioned", True):
        sigma_emb = prior.sigma_embedding(sigma, batch).float()
    if getattr(operator, "needs_features", False):
        return operator([f.float() for f in features], sigma_emb, mask=use_mask, size=size)
    return operator(z0_hat.float(), sigma_emb, mask=use_mask, **extra)


def check_finite(tensor: Tensor, step: int, what: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).flatten(1).any(1).nonzero().flatten().tolist()
        raise SiloError(f"NaN or Inf in {what} at step {step} (images {bad} of the batch); try a smaller --eta or --steps")


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
