"""Tiled restoration: the prior's denoiser run on overlapping latent tiles, blended every step.

Every sampler reaches the UNet through :meth:`Prior.denoise` (via ``samplers.common.predict``), so tiling
there tiles every method on the sampler contract, batch and classifier-free guidance included:
:class:`TiledPrior` is the same prior whose ``denoise`` runs the UNet on each tile and blends the outputs
over the overlaps with smooth weights (MultiDiffusion): linear ramps across each overlap, 1 elsewhere,
normalised to sum to 1. Because the blend is an ordinary differentiable function of the whole latent, the
rest follows on the whole image: the guidance gradient (SILO's ``grad ||w - H(z0_hat)||``, Latent-DPS's
through the decoder) is the gradient *through* the blend, and the scheduler update, elementwise, is the
blend of the tiles' updates. No seam can appear that the blend did not make.

Memory: each tile's UNet call runs under ``torch.utils.checkpoint`` when a gradient is wanted, so the
backward of SILO (or of a decoder-guided method) holds one tile's activations at a time; what grows with
the image is the latents, the measurement and the decoded image. UNet features that a readout operator
reads are returned by each tile's checkpointed call and blended like the output (tile positions are
multiples of the UNet's down-sampling, so every feature map has integer tile offsets).

The latent operator runs by tiles too (:meth:`TiledPrior.apply_operator_by_tiles`, called by
``samplers.common.apply_operator``): each tile's latent, features and mask, its overlap with the neighbours as
its halo, the outputs blended with the same weights, each call checkpointed; its norms then see a tile, as
they saw a training crop. The guidance loss is still the one norm over the whole image.

The VAE encodes the measurement and decodes the result by tiles too, with diffusers' own tiling
(``AutoencoderKL.enable_tiling``: overlapping tiles, linear blends) set to the same tile and overlap; a
VAE without it runs on the whole image.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from silo.errors import SiloError
from silo.priors.prior import Prior


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one latent lie: starts along each axis, tile side and overlap, in latent cells."""

    rows: tuple[int, ...]
    cols: tuple[int, ...]
    tile: tuple[int, int]
    overlap: int
    vae_scale: int

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def describe(self) -> dict[str, Any]:
        """The tiling as a log records it (pixels)."""
        s = self.vae_scale
        return {
            "tiles": [len(self.rows), len(self.cols)],
            "tile_px": [self.tile[0] * s, self.tile[1] * s],
            "overlap_px": self.overlap * s,
            "row_starts_px": [r * s for r in self.rows],
            "col_starts_px": [c * s for c in self.cols],
        }


def _starts(length: int, tile: int, overlap: int, align: int) -> tuple[int, ...]:
    """Evenly spread tile starts covering ``length`` with at least ``overlap`` shared, multiples of ``align``."""
    if tile >= length:
        return (0,)
    stride = max(align, tile - overlap)
    n = math.ceil((length - tile) / stride) + 1
    last = length - tile
    starts = sorted({min(last, round(k * last / (n - 1) / align) * align) for k in range(n)})
    return tuple(starts)


def plan_tiles(prior: Prior, image_size: tuple[int, int], tile_size: int, tile_overlap: int | None) -> TilePlan | None:
    """The tiles of an ``image_size`` image, or None when one tile covers it (or ``tile_size`` is 0)."""
    h, w = image_size
    if not tile_size or (h <= tile_size and w <= tile_size):
        return None
    multiple = prior.size_multiple
    if tile_size % multiple:
        raise SiloError(f"tile size {tile_size} px is not a multiple of {multiple} px, which this prior needs")
    overlap_px = tile_size // 4 if tile_overlap is None else int(tile_overlap)
    if overlap_px >= tile_size:
        raise SiloError(f"tile overlap {overlap_px} px must be smaller than the tile ({tile_size} px)")
    scale = prior.vae_scale
    align = multiple // scale
    lh, lw, lt = h // scale, w // scale, tile_size // scale
    overlap = overlap_px // scale
    tile = (min(lt, lh), min(lt, lw))
    return TilePlan(_starts(lh, tile[0], overlap, align), _starts(lw, tile[1], overlap, align), tile, overlap, scale)


def _ramp(length: int, overlap: int, rise: bool, fall: bool) -> Tensor:
    """1-D blending weight of a tile: linear ramps over ``overlap`` cells on the sides that meet a neighbour."""
    w = torch.ones(length)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        n = min(overlap, length)
        if rise:
            w[:n] = torch.minimum(w[:n], ramp[:n])
        if fall:
            w[length - n :] = torch.minimum(w[length - n :], ramp[:n].flip(0))
    return w


class TiledPrior(Prior):
    """The same prior (shared modules) whose ``denoise``, ``encode`` and ``decode`` work by tiles."""

    plan: TilePlan
    tile_size: int
    tile_overlap: int

    @classmethod
    def wrap(cls, prior: Prior, plan: TilePlan) -> TiledPrior:
        tiled = cls.__new__(cls)
        tiled.__dict__.update(prior.__dict__)
        tiled.plan = plan
        tiled.tile_size = max(plan.tile) * plan.vae_scale
        tiled.tile_overlap = plan.overlap * plan.vae_scale
        return tiled

    @property
    def vae_tiling(self) -> bool:
        """Whether the VAE tiles itself (diffusers' ``enable_tiling``); else it runs on the whole image."""
        return hasattr(self.vae, "use_tiling") and hasattr(self.vae, "tile_sample_min_size")

    def describe_tiling(self) -> dict[str, Any]:
        return {**self.plan.describe(), "vae_tiling": self.vae_tiling, "checkpointed_tiles": True}

    # -- denoiser ------------------------------------------------------------------------------
    def _tile_forward(self, z: Tensor, t: Tensor | int, context: Tensor | None, collector: Any) -> tuple[Tensor, ...]:
        """One tile's UNet output, and the UNet features its hooks collected (as outputs, so that a
        checkpointed call returns them with their gradient)."""
        if collector is None:
            return (Prior.denoise(self, z, t, context),)
        saved = collector.features
        collector.features = []
        try:
            out = Prior.denoise(self, z, t, context)
            features = list(collector.features)
        finally:
            collector.features = saved
        return (out, *features)

    def denoise(self, z: Tensor, t: Tensor | int, context: Tensor | None = None) -> Tensor:
        """The UNet's prediction on the whole latent, computed tile by tile and blended over the overlaps."""
        from silo.operators.features import active_hooks

        plan = self.plan
        lh, lw = z.shape[-2:]
        if (lh, lw) != (plan.rows[-1] + plan.tile[0], plan.cols[-1] + plan.tile[1]):
            raise SiloError(f"latent {lw}x{lh} does not match the tiling planned for this run")
        collector = active_hooks(self.unet)
        grad = torch.is_grad_enabled() and z.requires_grad
        out = weight_sum = None
        feats: list[Tensor] = []
        feat_weights: list[Tensor] = []
        th, tw = plan.tile
        for i, r in enumerate(plan.rows):
            for j, c in enumerate(plan.cols):
                wy = _ramp(th, plan.overlap, i > 0, i < len(plan.rows) - 1)
                wx = _ramp(tw, plan.overlap, j > 0, j < len(plan.cols) - 1)
                weight = (wy[:, None] * wx[None, :]).to(z.device)[None, None]
                tile = z[..., r : r + th, c : c + tw]
                if grad:
                    results = torch.utils.checkpoint.checkpoint(
                        self._tile_forward, tile, t, context, collector, use_reentrant=False
                    )
                else:
                    results = self._tile_forward(tile, t, context, collector)
                eps = results[0].float()
                if out is None:
                    out = torch.zeros(*eps.shape[:2], lh, lw, device=z.device)
                    weight_sum = torch.zeros(1, 1, lh, lw, device=z.device)
                out[..., r : r + th, c : c + tw] += eps * weight
                weight_sum[..., r : r + th, c : c + tw] += weight
                for k, feature in enumerate(results[1:]):
                    self._blend_feature(feats, feat_weights, k, feature, weight, r, c, th, lh, lw)
        if collector is not None:
            collector.features.extend(f / fw for f, fw in zip(feats, feat_weights))
        return out / weight_sum

    # -- latent operator -----------------------------------------------------------------------------
    def apply_operator_by_tiles(self, operator: torch.nn.Module, inputs: Any) -> Tensor:
        """``H(.)`` on each tile (its latent, its UNet features, its part of the mask; each tile's neighbours
        are its halo) blended with the denoiser's weights; checkpointed per tile when a gradient is wanted, so
        an operator's activations too are held one tile at a time."""
        from dataclasses import replace as _replace

        from silo.operators.base import call_operator

        plan = self.plan
        lh, lw = inputs.latent_size
        th, tw = plan.tile
        z0, features, mask = inputs.z0, list(inputs.features or []), inputs.mask
        ref = z0 if z0 is not None else features[0]
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in [z0, *features])

        def crop(t: Tensor | None, r: int, c: int) -> Tensor | None:
            if t is None:
                return None
            f = t.shape[-2] / lh  # this tensor's cells per latent cell
            return t[..., int(r * f) : int((r + th) * f), int(c * f) : int((c + tw) * f)]

        def one(z_tile: Tensor | None, mask_tile: Tensor | None, *feature_tiles: Tensor) -> Tensor:
            tile_inputs = _replace(
                inputs, z0=z_tile, features=list(feature_tiles) or inputs.features, mask=mask_tile, latent_size=(th, tw)
            )
            return call_operator(operator, tile_inputs, self).float()

        out = weight_sum = None
        for i, r in enumerate(plan.rows):
            for j, c in enumerate(plan.cols):
                weight = (
                    _ramp(th, plan.overlap, i > 0, i < len(plan.rows) - 1)[:, None]
                    * _ramp(tw, plan.overlap, j > 0, j < len(plan.cols) - 1)[None, :]
                ).to(ref.device)[None, None]
                args = (crop(z0, r, c), crop(mask, r, c), *[crop(f, r, c) for f in features])
                h = torch.utils.checkpoint.checkpoint(one, *args, use_reentrant=False) if grad else one(*args)
                if out is None:
                    out = torch.zeros(*h.shape[:2], lh, lw, device=h.device)
                    weight_sum = torch.zeros(1, 1, lh, lw, device=h.device)
                out[..., r : r + th, c : c + tw] += h * weight
                weight_sum[..., r : r + th, c : c + tw] += weight
        return out / weight_sum

    @staticmethod
    def _blend_feature(
        feats: list[Tensor],
        feat_weights: list[Tensor],
        k: int,
        feature: Tensor,
        weight: Tensor,
        r: int,
        c: int,
        th: int,
        lh: int,
        lw: int,
    ) -> None:
        """Add one tile's ``k``-th UNet feature map into the whole-image buffers at its own resolution."""
        factor = th / feature.shape[-2]
        down = int(round(factor))
        fw = F.avg_pool2d(weight, down) if down > 1 else weight
        fr, fc = int(r / down), int(c / down)
        fh, fwid = feature.shape[-2:]
        if len(feats) <= k:
            feats.append(
                torch.zeros(*feature.shape[:2], lh // down, lw // down, device=feature.device, dtype=torch.float32)
            )
            feat_weights.append(torch.zeros(1, 1, lh // down, lw // down, device=feature.device))
        feats[k][..., fr : fr + fh, fc : fc + fwid] += feature.float() * fw
        feat_weights[k][..., fr : fr + fh, fc : fc + fwid] += fw

    # -- VAE -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _vae_tiles(self) -> Iterator[None]:
        """diffusers' VAE tiling at this run's tile and overlap, for the duration of one call."""
        if not self.vae_tiling:
            yield
            return
        vae = self.vae
        saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor)
        vae.use_tiling = True
        vae.tile_sample_min_size = self.tile_size
        vae.tile_latent_min_size = self.tile_size // self.vae_scale
        vae.tile_overlap_factor = self.tile_overlap / self.tile_size
        try:
            yield
        finally:
            vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = saved

    def encode(self, x: Tensor, generators: list[torch.Generator] | None = None, sample: bool = True) -> Tensor:
        with self._vae_tiles():
            return super().encode(x, generators, sample)

    def decode(self, z: Tensor) -> Tensor:
        with self._vae_tiles():
            return super().decode(z)


def tiled(prior: Prior, image_size: tuple[int, int], tile_size: int, tile_overlap: int | None) -> Prior:
    """``prior`` itself when one tile covers the image, else a :class:`TiledPrior` sharing its modules."""
    plan = plan_tiles(prior, image_size, tile_size, tile_overlap)
    return prior if plan is None else TiledPrior.wrap(prior, plan)
