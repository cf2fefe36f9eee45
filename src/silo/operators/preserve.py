"""The "preserve" latent operator (published ``preserve_ldn``, used for the COCO SR x4 CNN run).

A small residual U-Net at full latent resolution that keeps the input: ``z + skip_scale * ...`` and a
noise-gated colour projection. Conditioned on its own sinusoidal embedding of ``noise_level / max_noise``
(``noise_level`` on the [-1, 1] image scale, as the published code), not on the prior UNet's embedding.

Matched against the published code's golden output (max error 6e-8): the 3x3 input conv sees
``[z, position map]`` (the raw latent, not the colour projection); no down-sampling anywhere; the
embedding goes straight (no activation) into each block's ``noise_proj``; the second decoder block
concatenates the first encoder block's output, the third the input conv's output; sines in even slots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from silo.degradations.noise import to_model_scale
from silo.errors import SiloError
from silo.operators.base import LatentOperator, OperatorInputs, SigmaEmbedder, state_shape
from silo.operators.cnn import resize_map


def noise_embedding(n: Tensor, dim: int) -> Tensor:
    """Fixed sinusoidal embedding: ``dim/2`` frequencies ``exp(-i ln(1e4) / (dim/2 - 1))``, sin even, cos odd."""
    half = dim // 2
    freqs = torch.exp(-torch.arange(half, dtype=torch.float32, device=n.device) * math.log(10000.0) / (half - 1))
    args = n.float().reshape(-1, 1) * freqs
    return torch.stack([args.sin(), args.cos()], -1).reshape(-1, 2 * half)


def position_map(channels: int, size: int) -> Tensor:
    """A fixed 2-D sinusoidal map (half the channels along y, half along x) for freshly built nets."""
    coords = torch.linspace(-1.0, 1.0, size)
    per_axis = channels // 2
    maps = []
    for axis in range(2):
        grid = coords.view(-1, 1).expand(size, size) if axis == 0 else coords.view(1, -1).expand(size, size)
        for k in range(per_axis):
            freq = math.pi * 2 ** (k // 2)
            maps.append(torch.sin(freq * grid) if k % 2 == 0 else torch.cos(freq * grid))
    return torch.stack(maps[:channels])


class PositionalEmbedding(nn.Module):
    """Holds the checkpoint's position map as a buffer; resized bilinearly to the latent size."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.register_buffer("positional_embedding", position_map(channels, size))

    def forward(self, size: Sequence[int]) -> Tensor:
        return resize_map(self.positional_embedding, size)


class NoiseResBlock(nn.Module):
    """conv-GN-SiLU, + projected noise embedding, conv-GN, + (1x1) shortcut, SiLU."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(min(8, c_out), c_out)
        self.noise_proj = nn.Linear(emb_dim, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.skip_conv = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = h + self.noise_proj(emb)[:, :, None, None]
        h = self.norm2(self.conv2(h))
        return F.silu(h + (x if self.skip_conv is None else self.skip_conv(x)))


class PreserveOperator(LatentOperator, ModelMixin, ConfigMixin):
    """Identity-preserving latent degradation network (fixed 3-block topology, widths configurable)."""

    kind = "preserve"
    needs_features = False
    uses_unet_sigma_embedding = False
    can_read = reads = frozenset({"z0"})
    training_defaults = None  # published weights only: no training recipe to follow
    published_marker = "identity_gate.0.weight"

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        channels: Sequence[int] = (48, 96, 128),
        noise_embedding_dim: int = 128,
        position_channels: int = 8,
        max_noise: float = 0.1,
        norm_size: int = 64,
    ):
        super().__init__()
        c0, c1, c2 = channels
        c, e = latent_channels, noise_embedding_dim
        self.skip_scale = nn.Parameter(torch.ones(1))
        self.pos_embedding = PositionalEmbedding(position_channels, norm_size)
        self.initial_proj = nn.Sequential(nn.Conv2d(c, c, 1), nn.SiLU())
        self.initial_conv = nn.Conv2d(c + position_channels, c0, 3, padding=1)
        self.blocks = nn.ModuleList([NoiseResBlock(c0, c0, e), NoiseResBlock(c0, c1, e), NoiseResBlock(c1, c2, e)])
        self.bottleneck = NoiseResBlock(c2, c2, e)
        self.up_blocks = nn.ModuleList(
            [NoiseResBlock(c2, c1, e), NoiseResBlock(c1 + c0, c0, e), NoiseResBlock(c0 + c0, c0, e)]
        )
        self.final_conv = nn.Conv2d(c0, c, 3, padding=1)
        self.identity_gate = nn.Sequential(nn.Linear(e, 1), nn.Sigmoid())

    def forward_arguments(self, inputs: OperatorInputs, prior: SigmaEmbedder | None) -> tuple[tuple, dict]:
        """Conditioned on its own embedding of the noise std on the [-1, 1] scale, not the prior's."""
        z0 = inputs.z0
        level = torch.full((z0.shape[0],), float(to_model_scale(inputs.noise_sigma)), device=z0.device)
        return (z0.to(self.dtype), None), {"mask": None, "noise_level": level}

    @classmethod
    def config_from_published(cls, state: dict[str, Tensor], path: Path) -> dict:
        """The ``preserve_ldn`` layout: a plain state dict."""
        pos = state_shape(state, "pos_embedding.positional_embedding", path)
        return {
            "latent_channels": int(state_shape(state, "final_conv.weight", path)[0]),
            "channels": [int(state_shape(state, f"blocks.{i}.conv1.weight", path)[0]) for i in range(3)],
            "noise_embedding_dim": int(state_shape(state, "blocks.0.noise_proj.weight", path)[1]),
            "position_channels": int(pos[0]),
            "norm_size": int(pos[-1]),
        }

    def forward(
        self,
        z0: Tensor,
        sigma_emb: Tensor | None = None,
        mask: Tensor | None = None,
        noise_level: Tensor | float | None = None,
    ) -> Tensor:
        """``H(z0)`` at noise std ``noise_level`` ([-1, 1] scale, per image or scalar); the other args are unused."""
        if noise_level is None:
            raise SiloError("the preserve operator needs noise_level (noise std on the [-1, 1] scale)")
        level = torch.as_tensor(noise_level, dtype=torch.float32, device=z0.device).reshape(-1)
        emb = noise_embedding(level / self.config.max_noise, self.config.noise_embedding_dim).to(z0.dtype)
        emb = emb.expand(z0.shape[0], -1)
        colour = self.initial_proj(z0)
        pos = self.pos_embedding(z0.shape[-2:]).to(z0.dtype).expand(z0.shape[0], -1, -1, -1)
        h0 = self.initial_conv(torch.cat([z0, pos], 1))
        h1 = self.blocks[0](h0, emb)
        h = self.blocks[2](self.blocks[1](h1, emb), emb)
        h = self.up_blocks[0](self.bottleneck(h, emb), emb)
        h = self.up_blocks[1](torch.cat([h, h1], 1), emb)
        h = self.up_blocks[2](torch.cat([h, h0], 1), emb)
        out = self.final_conv(h)
        gate = self.identity_gate(emb)[:, :, None, None]
        out = (1 - gate) * out + gate * colour
        return out + self.skip_scale * z0
