"""The inverse problem every sampler solves: the measurement, its degradation and parameters, per-image seeds."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from silo.degradations.base import Degradation, Params, generators_for


@dataclass
class Problem:
    """An inverse problem for a batch: ``y = A(x) + n`` with ``A = degradation`` and its ``params``.

    ``seeds`` holds one seed per image; every random draw for image ``i`` (initial latent, encoder sample,
    scheduler noise) comes from a named stream of ``seeds[i]``, so batches equal single runs. The runner
    derives each image's seed from the run's seed and the image's content (:func:`image_seed`), so two
    images never share a noise field while a rerun reproduces exactly.
    """

    degradation: Degradation
    y: Tensor
    params: Params = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if len(self.seeds) != self.y.shape[0]:
            raise ValueError(f"{len(self.seeds)} seeds for a batch of {self.y.shape[0]} measurements")
        if self.image_size is None:
            self.image_size = self.degradation.image_shape(*self.y.shape[-2:])

    @property
    def batch(self) -> int:
        return self.y.shape[0]

    @property
    def noise_sigma(self) -> float:
        return self.degradation.noise_sigma

    @property
    def mask(self) -> Tensor | None:
        return self.degradation.mask(self.params)

    @property
    def blur_kernel(self) -> Tensor | None:
        return self.degradation.blur_kernel(self.params)

    def generators(self, stream: str, device: str | torch.device = "cpu") -> list[torch.Generator]:
        """Independent per-image generators for one named random stream ("init", "encode", "step", ...)."""
        return generators_for([stream_seed(s, stream) for s in self.seeds], device)


def stream_seed(seed: int, stream: str) -> int:
    """A seed for one named random stream of one image: independent streams, reproducible across runs."""
    digest = hashlib.blake2b(f"{int(seed)}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**63)


def image_seed(seed: int, image_key: str) -> int:
    """The seed of one image's random streams: the run's seed and the image's identity together."""
    digest = hashlib.blake2b(f"{int(seed)}:{image_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**63)


@dataclass
class SamplerSettings:
    """Settings shared by every method; method-specific step sizes are the samplers' keyword arguments."""

    steps: int = 999
    scheduler: str = "ddpm"  # a name of silo.samplers.context.SCHEDULERS or a diffusers scheduler class
    eta: float = 0.5  # SILO's guidance step size ("scale" in the reference)
    grad_clamp: float | None = 1.0  # clamp of the guidance gradient, elementwise; None disables
    clamp_measurement: bool = False  # clamp E(y) to [-4, 4]
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = off
    cfg_fix: bool = False  # with CFG, the operator sees z0_hat of the text-conditional prediction only
    prompt: str = ""
    negative_prompt: str = ""
    # fraction of the noise schedule run: 1 starts from pure noise (the paper); below 1 the sampler starts
    # from the encoded measurement noised to that level and runs only the last part of the schedule
    start_strength: float = 1.0
    ddim_eta: float = 0.0  # stochasticity of DDIM steps (not the guidance step size)
    # image side (px) at which ``eta`` was tuned. The guidance differentiates a norm, so each latent's share
    # of the step shrinks as 1 / side (1 / sqrt(pixels)); with a reference the step is scaled by
    # sqrt(H * W) / size, so an eta tuned on 64 px crops means the same per latent at 256 px. None: eta as
    # given (the paper)
    eta_reference_size: int | None = None
    deterministic: bool = False  # deterministic kernels (slower on GPU)
    # tiled restoration (silo.priors.tiled): images with a side over ``tile_size`` px are denoised in
    # overlapping tiles blended every step; 0 never tiles. ``tile_overlap`` px are shared by neighbours
    # (None: a quarter of the tile)
    tile_size: int = 512
    tile_overlap: int | None = None
    # inpainting: the output keeps the measurement's known pixels, the seam feathered ``seam_feather`` px
    # into the hole (silo.consistency)
    keep_known: bool = True
    seam_feather: int = 4
    # every task: gradient steps on ||A(x) - y|| from the decoded output (0 = none; silo.consistency)
    consistency_steps: int = 0
    prompt_embeds: Any = None  # PromptEmbeddings: bypass the text encoder

    @property
    def steps_run(self) -> int:
        """Denoising steps a sampler runs: ``steps``, or its last ``start_strength`` fraction (at least one)."""
        return max(1, round(self.start_strength * self.steps))

    def guidance_eta(self, height: int, width: int) -> float:
        """SILO's step size for ``height x width`` images (see ``eta_reference_size``)."""
        if self.eta_reference_size is None:
            return self.eta
        return self.eta * math.sqrt(height * width) / self.eta_reference_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("prompt_embeds")
        return data
