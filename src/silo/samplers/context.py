"""The set-up every sampler shares, built once per run: scheduler, timesteps, prompts, initial latents, the
encoded measurement and named random streams. A sampler receives it and adds only its guidance."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from silo.degradations.noise import randn_per_image
from silo.errors import SiloError
from silo.priors.prior import Prior, PromptEmbeddings
from silo.samplers.problem import Problem, SamplerSettings

#: short names; any other variance-preserving diffusers scheduler class works by its class name
#: (``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``, ``PNDMScheduler``, ...)
SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler"}


def scheduler_class(name: str):
    """The diffusers scheduler class for a short name (``ddim``) or a class name (``DDIMScheduler``)."""
    import diffusers

    cls = getattr(diffusers, SCHEDULERS.get(name, name), None)
    if cls is None or not hasattr(cls, "from_config") or not hasattr(cls, "step"):
        raise SiloError(
            f"unknown scheduler {name!r} (choose from {', '.join(SCHEDULERS)}, or a diffusers scheduler class)"
        )
    return cls


def make_scheduler(prior: Prior, settings: SamplerSettings):
    """A fresh scheduler of the chosen kind from the prior's own scheduler config, timesteps set."""
    cls = scheduler_class(settings.scheduler)
    train_steps = int(prior.scheduler.config.num_train_timesteps)
    if not 1 <= settings.steps <= train_steps:
        raise SiloError(f"steps must be in 1..{train_steps}, got {settings.steps}")
    # latents are not images: never clip or threshold z0_hat (a config that omits clip_sample means True)
    scheduler = cls.from_config(prior.scheduler.config, clip_sample=False, thresholding=False)
    scheduler.set_timesteps(settings.steps, device=prior.device)
    if not hasattr(scheduler, "alphas_cumprod") or float(scheduler.init_noise_sigma) != 1.0:
        raise SiloError(
            f"scheduler {settings.scheduler}: silo's samplers need a variance-preserving scheduler "
            f"(ddpm, ddim, DPMSolverMultistepScheduler, UniPCMultistepScheduler, ...), not a sigma-space one"
        )
    return scheduler


def step_kwargs(scheduler, settings: SamplerSettings, generators: list[torch.Generator]) -> dict[str, Any]:
    """Extra arguments ``scheduler.step`` takes: DDIM's own ``eta``, per-image generators where accepted."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = settings.ddim_eta
    if "generator" in params:
        kwargs["generator"] = generators
    return kwargs


def sampling_timesteps(scheduler, settings: SamplerSettings) -> Tensor:
    """The timesteps run: all of them, or the last ``settings.steps_run``."""
    if not 0.0 < settings.start_strength <= 1.0:
        raise SiloError(f"start_strength must be in (0, 1], got {settings.start_strength}")
    keep = min(settings.steps_run, len(scheduler.timesteps))
    return scheduler.timesteps[len(scheduler.timesteps) - keep :]


def encode_measurement(prior: Prior, problem: Problem, clamp: bool) -> Tensor:
    """``w = E(y)``, once: the measurement brought to image size (SR: bicubic up-sampling), encoded as a
    posterior sample with per-image generators, optionally clamped to [-4, 4]."""
    y_full = problem.degradation.to_image_size(problem.y)
    with torch.no_grad():
        w = prior.encode(y_full, problem.generators("encode"))
    return w.clamp(-4, 4) if clamp else w


@dataclass
class SamplingContext:
    """What a sampler needs besides its guidance. ``z`` is the first latent; ``w`` is encoded on first use."""

    prior: Prior
    problem: Problem
    settings: SamplerSettings
    scheduler: Any
    timesteps: Tensor
    prompts: PromptEmbeddings
    z: Tensor
    show_progress: bool = True
    _w: Tensor | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls, prior: Prior, problem: Problem, settings: SamplerSettings, show_progress: bool = True
    ) -> SamplingContext:
        scheduler = make_scheduler(prior, settings)
        timesteps = sampling_timesteps(scheduler, settings)
        if settings.prompt_embeds is not None:
            prompts = settings.prompt_embeds
        else:
            prompts = prior.encode_prompt(
                settings.prompt, problem.batch, settings.negative_prompt, settings.guidance_scale
            )
        ctx = cls(
            prior, problem, settings, scheduler, timesteps, prompts, z=torch.empty(0), show_progress=show_progress
        )
        ctx.z = ctx._initial_latents()
        return ctx

    @property
    def w(self) -> Tensor:
        """The encoded measurement ``E(y)`` (clamped if the settings say so)."""
        if self._w is None:
            self._w = encode_measurement(self.prior, self.problem, self.settings.clamp_measurement)
        return self._w

    @property
    def cfg(self) -> bool:
        return self.settings.guidance_scale != 1.0 and self.prompts.uncond is not None

    @property
    def latent_size(self) -> tuple[int, int]:
        return tuple(self.z.shape[-2:])

    def generators(self, stream: str) -> list[torch.Generator]:
        return self.problem.generators(stream, device=self.prior.device)

    def step_kwargs(self) -> dict[str, Any]:
        """``scheduler.step``'s extra arguments, with this run's per-image step noise."""
        if not hasattr(self, "_step_generators"):
            self._step_generators = self.generators("step")
        return step_kwargs(self.scheduler, self.settings, self._step_generators)

    def steps(self, desc: str) -> Iterable[tuple[int, Tensor]]:
        """``(i, t)`` over the timesteps run, with a progress bar."""
        from silo.samplers.common import progress

        return enumerate(progress(self.timesteps, self.show_progress, desc))

    def _initial_latents(self) -> Tensor:
        """Pure noise, or with ``start_strength < 1`` the encoded measurement noised to the first timestep run
        (an SDEdit-style warm start)."""
        prior, problem, scheduler = self.prior, self.problem, self.scheduler
        h, w = problem.image_size
        shape = (prior.latent_channels, h // prior.vae_scale, w // prior.vae_scale)
        z = randn_per_image(problem.generators("init"), shape).to(prior.device)
        if self.settings.start_strength >= 1.0:
            return z * scheduler.init_noise_sigma
        t0 = self.timesteps[:1].repeat(z.shape[0])
        return scheduler.add_noise(self.w.float(), z, t0)
