"""One wrapper around a diffusers latent diffusion prior: VAE, denoiser UNet, scheduler, optional text encoder.

It hides the two UNet flavours (text-conditioned ``UNet2DConditionModel`` and unconditional
``UNet2DModel``) behind :meth:`Prior.denoise`, and exposes what SILO needs beyond a pipeline: the UNet's own
time embedding, used to condition latent operators on the measurement noise level.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from silo.cards import PriorCard
from silo.degradations.noise import randn_per_image, to_model_scale
from silo.errors import SiloError

#: parts a prior can keep on the CPU between their uses (``--offload``), by their command-line names
OFFLOADABLE = {"vae": "vae", "text-encoder": "text_encoder"}

#: noise levels are mapped to a pseudo-timestep ``(sigma_model / SIGMA_T_RANGE) * 999`` as in the reference
SIGMA_T_RANGE = 0.1


@dataclass
class PromptEmbeddings:
    """Text conditioning for a batch; ``uncond`` is set only when classifier-free guidance is on."""

    cond: Tensor | None
    uncond: Tensor | None = None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


class Prior:
    """A latent diffusion prior: ``encode``/``decode`` images, ``denoise`` latents, embed timesteps."""

    def __init__(
        self,
        vae: Any,
        unet: Any,
        scheduler: Any,
        text_encoder: Any | None = None,
        tokenizer: Any | None = None,
        name: str = "prior",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.vae, self.unet, self.scheduler = vae, unet, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.name = name
        self.card = PriorCard(name=name)  # sampling defaults; from_pretrained reads the folder's silo_prior.json
        self.device = torch.device(device)
        self.dtype = dtype
        for module in (vae, unet, text_encoder):
            if module is not None:
                module.to(self.device)
                if next(module.parameters()).dtype != dtype:
                    module.to(dtype=dtype)
                module.eval().requires_grad_(False)

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        local_files_only: bool | None = None,
    ) -> Prior:
        """Load a Hub id, a local diffusers-layout folder, or a single-file checkpoint (.safetensors/.ckpt)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel

        from silo.models import prior_location

        source = prior_location(name_or_path)  # "silo-tiny": the shipped prior
        path = Path(source)
        local = local_files_only if local_files_only is not None else (_offline() or path.exists())
        if path.is_file():
            return cls._from_single_file(path, device, dtype)
        if path.exists() and not path.is_dir():
            raise SiloError(f"prior {source}: not a folder or checkpoint file")
        looks_local = path.is_dir() or source.startswith((".", "/", "~")) or source.count("/") > 1
        if looks_local and not path.is_dir():
            raise SiloError(f"prior folder not found: {source}")
        if path.is_dir():
            missing = [sub for sub in ("vae", "unet", "scheduler") if not (path / sub).is_dir()]
            if missing:
                raise SiloError(f"prior folder {source} lacks {', '.join(missing)}/ (expected the diffusers layout)")
        kwargs = {"local_files_only": local}
        weights = {**kwargs, "torch_dtype": dtype}

        def load(what: str, fn):
            try:
                return fn()
            except (OSError, ValueError) as err:
                hint = (
                    " (offline: HF_HUB_OFFLINE=1 and it is not in the local cache)"
                    if local and not path.is_dir()
                    else ""
                )
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise SiloError(f"prior {source}: cannot load {what}{hint}: {first}") from None

        unet_cfg = load("unet config", lambda: UNet2DConditionModel.load_config(source, subfolder="unet", **kwargs))
        unet_cls = UNet2DModel if unet_cfg.get("_class_name") == "UNet2DModel" else UNet2DConditionModel
        vae = load("vae", lambda: AutoencoderKL.from_pretrained(source, subfolder="vae", **weights))
        unet = load("unet", lambda: unet_cls.from_pretrained(source, subfolder="unet", **weights))
        sched_cfg = load("scheduler", lambda: DDPMScheduler.load_config(source, subfolder="scheduler", **kwargs))
        scheduler = DDPMScheduler.from_config(sched_cfg)
        text_encoder = tokenizer = None
        if unet_cls is UNet2DConditionModel:
            from transformers import AutoTokenizer, CLIPTextModel

            text_encoder = load(
                "text_encoder", lambda: CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights)
            )
            tokenizer = load(
                "tokenizer", lambda: AutoTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
            )
        prior = cls(vae, unet, scheduler, text_encoder, tokenizer, name=source, device=device, dtype=dtype)
        prior.card = PriorCard.read(path if path.is_dir() else None)  # its sampling defaults (a Hub id: none)
        return prior

    @classmethod
    def _from_single_file(cls, path: Path, device, dtype) -> Prior:
        from diffusers import DDPMScheduler, StableDiffusionPipeline

        if path.suffix not in (".safetensors", ".ckpt"):
            raise SiloError(f"prior {path}: single-file checkpoints must be .safetensors or .ckpt")
        try:
            pipe = StableDiffusionPipeline.from_single_file(str(path), local_files_only=_offline())
        except Exception as err:  # diffusers raises many types here; report the first line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SiloError(f"prior {path}: cannot load single-file checkpoint: {first}") from None
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        return cls(pipe.vae, pipe.unet, scheduler, pipe.text_encoder, pipe.tokenizer, str(path), device, dtype)

    # -- facts about the prior ----------------------------------------------------------------
    @property
    def is_conditional(self) -> bool:
        return self.text_encoder is not None or hasattr(self.unet.config, "cross_attention_dim")

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell along one side (8 for Stable Diffusion, 4 for silo-tiny)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE factor times the UNet's down-sampling."""
        return self.vae_scale * 2 ** (len(self.unet.config.down_block_types) - 1)

    @property
    def embedding_dim(self) -> int:
        """Width of the UNet's time embedding (1280 for Stable Diffusion 1.5)."""
        return int(self.unet.time_embedding.linear_2.out_features)

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)

    @property
    def shift_factor(self) -> float:
        """Latent mean offset of some VAEs (SD 3.5, FLUX); 0 for Stable Diffusion 1.x and silo-tiny."""
        return float(getattr(self.vae.config, "shift_factor", 0.0) or 0.0)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unet": type(self.unet).__name__,
            "latent_channels": self.latent_channels,
            "vae_scale": self.vae_scale,
            "embedding_dim": self.embedding_dim,
            "scaling_factor": self.scaling_factor,
            "prediction_type": self.scheduler.config.prediction_type,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }

    def check_image_size(self, height: int, width: int) -> None:
        m = self.size_multiple
        if height % m or width % m:
            raise SiloError(
                f"image size {width}x{height} is not a multiple of {m} px, which this prior needs; "
                f"pass --pad to pad it and crop the result back"
            )

    # -- offload -------------------------------------------------------------------------------
    #: parts kept on the CPU between their uses (names of :data:`OFFLOADABLE`)
    offload: frozenset[str] = frozenset()

    def set_offload(self, parts: Any) -> None:
        """Keep the VAE (``"vae"``) and/or the text encoder (``"text-encoder"``) on the CPU, moved to the device
        only while they run: SILO needs the VAE only to encode the measurement and decode the result, so the
        sampling loop holds the UNet alone on the device. Outputs are unchanged (the same weights run)."""
        parts = frozenset(parts or ())
        unknown = sorted(parts - set(OFFLOADABLE))
        if unknown:
            raise SiloError(f"cannot offload {', '.join(unknown)} (choose from {', '.join(OFFLOADABLE)})")
        self.offload = parts
        for name, attr in OFFLOADABLE.items():
            module = getattr(self, attr)
            if module is not None:
                module.to("cpu" if name in parts else self.device)

    @contextlib.contextmanager
    def placed(self, name: str):
        """The offloaded part ``name`` on the device for the duration of the block, back on the CPU after."""
        module = getattr(self, OFFLOADABLE[name])
        if name not in self.offload or module is None or self.device.type == "cpu":
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # -- VAE ------------------------------------------------------------------------------------
    def encode(self, x: Tensor, generators: list[torch.Generator] | None = None, sample: bool = True) -> Tensor:
        """``E(x)``: a sample of the encoder's posterior (its mean if ``sample=False``) times the scaling factor."""
        with self.placed("vae"):
            dist = self.vae.encode(x.to(self.device, self.dtype)).latent_dist
        if sample:
            if generators is not None:
                noise = randn_per_image(generators, dist.mean.shape[1:]).to(dist.mean)
            else:
                noise = torch.randn_like(dist.mean)
            latent = dist.mean + dist.std * noise
        else:
            latent = dist.mean
        return (latent - self.shift_factor) * self.scaling_factor

    def decode(self, z: Tensor) -> Tensor:
        """``D(z)`` in [-1, 1] (not clamped, so gradients flow where a method needs them)."""
        with self.placed("vae"):
            return self.vae.decode(z.to(self.dtype) / self.scaling_factor + self.shift_factor).sample

    # -- text -------------------------------------------------------------------------------------
    def encode_prompt(
        self, prompt: str | list[str], batch: int, negative_prompt: str | list[str] = "", guidance_scale: float = 1.0
    ) -> PromptEmbeddings:
        """Prompt embeddings for a batch; unconditional priors return ``None`` embeddings."""
        if not self.is_conditional:
            return PromptEmbeddings(None, None)
        if self.text_encoder is None or self.tokenizer is None:
            raise SiloError(
                f"prior {self.name}: text-conditioned UNet but no text encoder/tokenizer; pass prompt embeddings"
            )

        def embed(text: str | list[str]) -> Tensor:
            texts = [text] * batch if isinstance(text, str) else list(text)
            if len(texts) != batch:
                raise SiloError(f"got {len(texts)} prompts for a batch of {batch}")
            tokens = self.tokenizer(
                texts,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            with torch.no_grad(), self.placed("text-encoder"):
                return self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)

        cond = embed(prompt)
        uncond = embed(negative_prompt) if guidance_scale != 1.0 else None
        return PromptEmbeddings(cond, uncond)

    # -- denoiser ---------------------------------------------------------------------------------
    def denoise(self, z: Tensor, t: Tensor | int, context: Tensor | None = None) -> Tensor:
        """The UNet's raw prediction (epsilon, v or sample, per the scheduler's ``prediction_type``)."""
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=self.device)
        t = t.to(self.device).expand(z.shape[0]) if t.dim() == 0 else t.to(self.device)
        z = z.to(self.dtype)
        if self.is_conditional:
            if context is None:
                raise SiloError("this prior is text-conditioned: encode a prompt (possibly empty) first")
            return self.unet(z, t, encoder_hidden_states=context).sample
        return self.unet(z, t).sample

    def time_embedding(self, t: Tensor) -> Tensor:
        """The UNet's own embedding of (possibly fractional) timesteps: time projection then MLP."""
        t = torch.as_tensor(t, device=self.device, dtype=torch.float32).reshape(-1)
        emb = self.unet.time_proj(t).to(self.dtype)
        return self.unet.time_embedding(emb)

    def sigma_embedding(self, sigma: float | Tensor, batch: int | None = None) -> Tensor:
        """Noise-level conditioning for latent operators: the UNet time embedding of
        ``t = (sigma_model / 0.1) * 999`` where ``sigma_model`` is ``sigma`` (on [0, 1]) on the [-1, 1] scale."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.device).reshape(-1)
        if batch is not None and sigma.numel() == 1:
            sigma = sigma.expand(batch)
        t = to_model_scale(sigma) / SIGMA_T_RANGE * 999
        return self.time_embedding(t)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the diffusers folder layout (vae/, unet/, scheduler/ and text parts if any)."""
        folder = Path(folder)
        self.vae.save_pretrained(folder / "vae")
        self.unet.save_pretrained(folder / "unet")
        self.scheduler.save_pretrained(folder / "scheduler")
        if self.text_encoder is not None:
            self.text_encoder.save_pretrained(folder / "text_encoder")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder / "tokenizer")
        (folder / "silo_prior.json").write_text(json.dumps({"name": self.name, **self.describe()}, indent=2))
