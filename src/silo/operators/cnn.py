"""The SILO CNN latent operator: ``H(z0_hat, sigma) ~= E(A(x) + n)`` on the clean latent estimate.

Layout and parameter names equal the published ``cnn_sigma_layernorm`` checkpoint. Details the paper
leaves open were fixed by matching the published code's golden output exactly (max error 0.0):
LeakyReLU slope 0.01 in the sigma MLP; LayerNorm + ReLU after *every* encoder, decoder and
``adjust_encoding`` conv (the last ones too); the sigma map is concatenated *after* the latent
(``[z, s]``) and after the encoder output (``[e, s]``); output = ``processing(decoder(e) + adjust(e, s))``.

The reference hard-codes 64x64 latents in its LayerNorm affine maps and its sigma map. Those
parameters keep that reference shape (so checkpoints load) and are bilinearly resized to other latent
sizes, normalising over the actual ``[C, H, W]``; at the reference size nothing is resized.

``blur_kernel_scale=s`` (not in the published layout; 0 = off) makes the operator kernel-aware for blurs whose
kernel changes per image (motion blur): ``b = latent_blur(z0, kernel, s)`` (the kernel pooled to the latent
grid, :mod:`silo.operators.latent_blur`) is concatenated to the input, and with ``residual`` the output is
``b + net([z0, b])``. Then ``forward`` needs the degradation's ``kernel``.

``residual=True`` (not in the published layout) predicts ``z0 + net(z0)``: most degradations move a latent
only a little, and a short training run from scratch did not beat the identity map without it (silo-tiny,
gaussian blur, 800 steps: L1 0.125 against the identity's 0.147; sr4: 0.139 against 0.118).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from silo.errors import SiloError
from silo.operators.base import LatentOperator, OperatorInputs, SigmaEmbedder, TrainingDefaults, state_shape
from silo.operators.latent_blur import latent_blur


def resize_map(t: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinearly resize the last two dims of a ``[C, h, w]`` or ``[B, C, h, w]`` map (no-op at ``size``)."""
    size = (int(size[0]), int(size[1]))
    if tuple(t.shape[-2:]) == size:
        return t
    batched = t if t.dim() == 4 else t.unsqueeze(0)
    out = F.interpolate(batched, size=size, mode="bilinear", align_corners=False)
    return out if t.dim() == 4 else out.squeeze(0)


class ResizableLayerNorm(nn.Module):
    """LayerNorm over ``[C, H, W]`` whose ``[C, n, n]`` affine maps follow the input's spatial size."""

    def __init__(self, channels: int, norm_size: int = 64, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, norm_size, norm_size))
        self.bias = nn.Parameter(torch.zeros(channels, norm_size, norm_size))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        weight, bias = resize_map(self.weight, size), resize_map(self.bias, size)
        return F.layer_norm(x, tuple(x.shape[1:]), weight.to(x.dtype), bias.to(x.dtype), self.eps)


class CNNOperator(LatentOperator, ModelMixin, ConfigMixin):
    """Small conv encoder/decoder with a 1x1 skip, conditioned on the noise level by a sigma map (optionally
    residual: ``z0 + net(z0)``)."""

    kind = "cnn"
    needs_features = False
    uses_unet_sigma_embedding = True
    can_read = frozenset({"z0", "kernel"})
    #: the reference trains on noise U(0, 0.04) on the [-1, 1] scale, with Adam at 1e-4
    training_defaults = TrainingDefaults(noise_sigma_max=0.02, lr=1e-4, optimizer="adam")
    published_marker = "processing.0.weight"

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        embedding_dim: int = 1280,
        sigma_conditioned: bool = True,
        channels: Sequence[int] = (16, 32, 64, 128),
        sigma_hidden: int = 32,
        norm_size: int = 64,
        residual: bool = False,
        blur_kernel_scale: int = 0,
    ):
        super().__init__()
        if blur_kernel_scale < 0:
            raise ValueError(
                f"blur_kernel_scale must be 0 (off) or the VAE's down-sampling factor, got {blur_kernel_scale}"
            )
        extra = 1 if sigma_conditioned else 0
        n, chans = norm_size, list(channels)
        if sigma_conditioned:
            self.sigma_condition_precondition = nn.Sequential(
                nn.Linear(embedding_dim, sigma_hidden), nn.LeakyReLU(0.01), nn.Linear(sigma_hidden, n * n)
            )
        enc: list[nn.Module] = []
        c_in = latent_channels * (2 if blur_kernel_scale else 1) + extra
        for i, c in enumerate(chans):
            c_out = c + extra if i < len(chans) - 1 else c  # the reference widens all but the last by one
            enc += [nn.Conv2d(c_in, c_out, 3, padding=1), ResizableLayerNorm(c_out, n), nn.ReLU()]
            c_in = c_out
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        for c_out in reversed(chans[:-1]):
            dec += [nn.ConvTranspose2d(c_in, c_out, 3, padding=1), ResizableLayerNorm(c_out, n), nn.ReLU()]
            c_in = c_out
        self.decoder = nn.Sequential(*dec)
        self.adjust_encoding = nn.Sequential(
            nn.Conv2d(chans[-1] + extra, chans[0], 1), ResizableLayerNorm(chans[0], n), nn.ReLU()
        )
        self.processing = nn.Sequential(
            nn.Conv2d(chans[0], chans[0], 3, padding=1),
            ResizableLayerNorm(chans[0], n),
            nn.ReLU(),
            nn.Conv2d(chans[0], latent_channels, 3, padding=1),
        )

    def sigma_map(self, sigma_emb: Tensor, size: Sequence[int]) -> Tensor:
        """The one-channel noise-level map at the latent size."""
        n = self.config.norm_size
        flat = self.sigma_condition_precondition(sigma_emb)
        return resize_map(flat.view(-1, 1, n, n), size)

    @property
    def needs_blur_kernel(self) -> bool:
        return bool(self.config.get("blur_kernel_scale", 0))

    @property
    def reads(self) -> frozenset[str]:
        """``z0``, and the blur kernel when kernel-aware."""
        return frozenset({"z0", "kernel"}) if self.needs_blur_kernel else frozenset({"z0"})

    def missing_input(self, name: str) -> str:
        if name == "kernel":
            return (
                f"{type(self).__name__} is kernel-aware, but this problem has no blur kernel "
                f"(a blur task with --kernel, or a seeded random kernel)"
            )
        return super().missing_input(name)

    def forward_arguments(self, inputs: OperatorInputs, prior: SigmaEmbedder | None) -> tuple[tuple, dict]:
        extra = {"kernel": inputs.kernel} if self.needs_blur_kernel else {}
        return (inputs.z0.to(self.dtype), self.unet_sigma_embedding(inputs, prior)), {"mask": None, **extra}

    @classmethod
    def config_from_published(cls, state: dict[str, Tensor], path: Path) -> dict:
        """The ``cnn_sigma_layernorm`` layout: a plain state dict; the sigma MLP is present when sigma-conditioned."""
        sigma = "sigma_condition_precondition.0.weight" in state
        extra = int(sigma)
        outs = [state_shape(state, f"encoder.{i}.weight", path)[0] for i in (0, 3, 6, 9)]
        cfg = {
            "latent_channels": int(state_shape(state, "encoder.0.weight", path)[1]) - extra,
            "sigma_conditioned": sigma,
            "channels": [int(c) - extra for c in outs[:-1]] + [int(outs[-1])],
            "norm_size": int(state_shape(state, "encoder.1.weight", path)[-1]),
        }
        if sigma:
            hidden, emb = state_shape(state, "sigma_condition_precondition.0.weight", path)
            cfg.update(embedding_dim=int(emb), sigma_hidden=int(hidden))
        return cfg

    def forward(
        self, z0: Tensor, sigma_emb: Tensor | None, mask: Tensor | None = None, kernel: Tensor | None = None
    ) -> Tensor:
        """``H(z0)``: ``[B, C, h, w] -> [B, C, h, w]``; ``mask`` is accepted for a uniform call but unused;
        ``kernel`` (``k x k`` or ``B x k x k``, pixels) only for kernel-aware operators."""
        base, inputs = z0, [z0]
        if self.needs_blur_kernel:
            if kernel is None:
                raise SiloError("this CNN operator is kernel-aware: pass the degradation's blur kernel")
            base = latent_blur(z0, kernel, int(self.config.blur_kernel_scale))
            inputs.append(base)
        if self.config.sigma_conditioned:
            if sigma_emb is None:
                raise SiloError("this CNN operator is sigma-conditioned: pass the noise-level embedding")
            s = self.sigma_map(sigma_emb.to(z0.dtype), z0.shape[-2:]).expand(z0.shape[0], -1, -1, -1)
            e = self.encoder(torch.cat([*inputs, s], 1))
            skip = self.adjust_encoding(torch.cat([e, s], 1))
        else:
            e = self.encoder(torch.cat(inputs, 1))
            skip = self.adjust_encoding(e)
        out = self.processing(self.decoder(e) + skip)
        return base + out if self.config.residual else out
