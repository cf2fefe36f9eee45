"""The SILO readout operator: a head on the prior UNet's up-block ResNet outputs of the current step.

Layout and parameter names equal the published ``rg_sigma`` / ``rg_sigma_condinpaint`` checkpoints.
Matched exactly (max error 0.0) against the published code's golden outputs:
- each feature map gets the sigma map appended *after* it (``[f, s]``), then a ResNet bottleneck block:
  ``relu(conv1)``, ``relu(conv2)``, ``conv3``, plus the 1x1 shortcut, ReLU after the sum; every conv is
  bias-free and followed by GroupNorm(32) (the ``.norm`` entries);
- the blocks' outputs are summed with ``softmax(mixing_weights)``;
- the head input is ``[mixed, sigma map, mask]``; the sigma map is ``Linear`` -> 64x64 -> LayerNorm.
The timestep embedding (``emb_layers``, unused by SILO's inference and by the golden test) is added
after ``relu(conv1)``.
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
from silo.operators.cnn import ResizableLayerNorm, resize_map

#: SD 1.x / 2.x UNets: three ResNets in each of four up blocks.
DEFAULT_FEATURE_CHANNELS = (1280,) * 6 + (640,) * 3 + (320,) * 3


class NormConv2d(nn.Conv2d):
    """Bias-free conv followed by GroupNorm, stored as ``.weight`` and ``.norm`` like the checkpoint."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.GroupNorm(groups, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class BottleneckBlock(nn.Module):
    """1x1 down to ``mid``, 3x3, 1x1 up to ``out``, residual; optional embedding added after the first conv."""

    def __init__(self, c_in: int, mid: int, out: int, embedding_dim: int, groups: int):
        super().__init__()
        self.shortcut = NormConv2d(c_in, out, 1, groups) if c_in != out else None
        self.conv1 = NormConv2d(c_in, mid, 1, groups)
        self.conv2 = NormConv2d(mid, mid, 3, groups)
        self.conv3 = NormConv2d(mid, out, 1, groups)
        self.emb_layers = nn.Linear(embedding_dim, mid)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = F.relu(self.conv1(x))
        if emb is not None:
            h = h + self.emb_layers(emb.to(h.dtype))[:, :, None, None]
        h = F.relu(self.conv2(h))
        h = self.conv3(h)
        return F.relu(h + (x if self.shortcut is None else self.shortcut(x)))


def downsample_mask(mask: Tensor, size: Sequence[int]) -> Tensor:
    """Pixel mask (1 = known) to the latent grid by area averaging: a latent cell's known fraction."""
    size = (int(size[0]), int(size[1]))
    if tuple(mask.shape[-2:]) == size:
        return mask
    return F.interpolate(mask, size=size, mode="area")


class ReadoutOperator(LatentOperator, ModelMixin, ConfigMixin):
    """Bottleneck per UNet feature map, softmax mixing, small conv head to latent channels."""

    kind = "readout"
    needs_features = True
    uses_unet_sigma_embedding = True
    can_read = frozenset({"features", "mask"})
    #: the reference trains on noise U(0, 0.1) on the [-1, 1] scale, with AdamW at 2e-4; the blocks' timestep
    #: embedding is unused by SILO
    training_defaults = TrainingDefaults(
        noise_sigma_max=0.05, lr=2e-4, optimizer="adamw", frozen_parameters=("bottleneck_layers.*.emb_layers.*",)
    )
    published_marker = "mixing_weights"

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        embedding_dim: int = 1280,
        feature_channels: Sequence[int] = DEFAULT_FEATURE_CHANNELS,
        bottleneck_channels: int = 96,
        projection_dim: int = 384,
        norm_groups: int = 32,
        head_channels: Sequence[int] = (128, 32),
        mask_channel: bool = False,
        sigma_conditioned: bool = True,
        norm_size: int = 64,
    ):
        super().__init__()
        extra = 1 if sigma_conditioned else 0
        self.mixing_weights = nn.Parameter(torch.ones(len(feature_channels)))
        self.bottleneck_layers = nn.ModuleList(
            BottleneckBlock(c + extra, bottleneck_channels, projection_dim, embedding_dim, norm_groups)
            for c in feature_channels
        )
        if sigma_conditioned:
            self.sigma_emb_linear = nn.Linear(embedding_dim, norm_size * norm_size)
            self.sigma_emb_norm = ResizableLayerNorm(1, norm_size)
        h1, h2 = head_channels
        self.output_head = nn.Sequential(
            nn.Conv2d(projection_dim + extra + int(mask_channel), h1, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(h1, h2, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(h2, latent_channels, 1),
        )

    def sigma_map(self, sigma_emb: Tensor, size: Sequence[int]) -> Tensor:
        """Linear -> reference-size map -> resize -> LayerNorm over the actual ``[1, h, w]``."""
        n = self.config.norm_size
        flat = self.sigma_emb_linear(sigma_emb)
        return self.sigma_emb_norm(resize_map(flat.view(-1, 1, n, n), size))

    @property
    def reads(self) -> frozenset[str]:
        """The UNet features, and the mask with a mask channel."""
        return frozenset({"features", "mask"}) if self.config.mask_channel else frozenset({"features"})

    def missing_input(self, name: str) -> str:
        if name == "mask":
            return "this readout operator has a mask channel (random-box inpainting): pass the mask"
        return super().missing_input(name)

    def forward_arguments(self, inputs: OperatorInputs, prior: SigmaEmbedder | None) -> tuple[tuple, dict]:
        features = [f.to(self.dtype) for f in inputs.features]
        mask = inputs.mask if self.config.mask_channel else None
        return (features, self.unet_sigma_embedding(inputs, prior)), {"mask": mask, "size": inputs.latent_size}

    @classmethod
    def config_from_published(cls, state: dict[str, Tensor], path: Path) -> dict:
        """The ``rg_sigma`` layout; the mask channel is read from ``output_head.0.weight``'s input channels."""
        sigma = "sigma_emb_linear.weight" in state
        extra = int(sigma)
        count = int(state_shape(state, "mixing_weights", path)[0])
        mid, emb = state_shape(state, "bottleneck_layers.0.emb_layers.weight", path)
        proj = int(state_shape(state, "bottleneck_layers.0.conv3.weight", path)[0])
        head0 = state_shape(state, "output_head.0.weight", path)
        mask = int(head0[1]) - proj - extra
        if mask not in (0, 1):
            raise SiloError(
                f"operator checkpoint {path}: output_head.0.weight has {head0[1]} input channels, "
                f"expected {proj + extra} or {proj + extra + 1}"
            )
        cfg = {
            "latent_channels": int(state_shape(state, "output_head.4.weight", path)[0]),
            "embedding_dim": int(emb),
            "feature_channels": [
                int(state_shape(state, f"bottleneck_layers.{i}.conv1.weight", path)[1]) - extra for i in range(count)
            ],
            "bottleneck_channels": int(mid),
            "projection_dim": proj,
            "head_channels": [int(head0[0]), int(state_shape(state, "output_head.2.weight", path)[0])],
            "mask_channel": bool(mask),
            "sigma_conditioned": sigma,
        }
        if sigma:
            cfg["norm_size"] = int(state_shape(state, "sigma_emb_norm.weight", path)[-1])
        return cfg

    def _check_features(self, features: Sequence[Tensor]) -> None:
        want = list(self.config.feature_channels)
        got = [int(f.shape[1]) for f in features]
        if got != want:
            raise SiloError(f"readout operator expects UNet features with channels {want}, got {got}")

    def forward(
        self,
        features: Sequence[Tensor],
        sigma_emb: Tensor | None,
        timestep_emb: Tensor | None = None,
        mask: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Latent prediction at ``size`` (default: the largest feature map's size) from UNet features."""
        self._check_features(features)
        if size is None:
            size = tuple(max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1]))
        batch, dtype = features[0].shape[0], features[0].dtype
        extra: list[Tensor] = []
        if self.config.sigma_conditioned:
            if sigma_emb is None:
                raise SiloError("this readout operator is sigma-conditioned: pass the noise-level embedding")
            extra.append(self.sigma_map(sigma_emb.to(dtype), size).expand(batch, -1, -1, -1))
        weights = torch.softmax(self.mixing_weights, 0).to(dtype)
        mixed = 0
        for w, block, f in zip(weights, self.bottleneck_layers, features):
            x = torch.cat([resize_map(f, size), *extra], 1)
            mixed = mixed + w * block(x, timestep_emb)
        head_in = [mixed, *extra]
        if self.config.mask_channel:
            if mask is None:
                raise SiloError("this readout operator has a mask channel (random-box inpainting): pass the mask")
            head_in.append(downsample_mask(mask.to(dtype), size).expand(batch, -1, -1, -1))
        return self.output_head(torch.cat(head_in, 1))
