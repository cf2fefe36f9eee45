"""Collect the prior UNet's up-block ResNet outputs (the readout operator's input) with forward hooks.

Hooks leave the UNet's own ``forward`` untouched (no monkey-patching), so the UNet keeps working for
every other caller and the hooks vanish cleanly on exit.
"""

from __future__ import annotations

from torch import Tensor, nn


def _up_resnets(unet: nn.Module) -> list[nn.Module]:
    blocks = getattr(unet, "up_blocks", None)
    if blocks is None:
        from silo.errors import SiloError

        raise SiloError(f"{type(unet).__name__} has no up_blocks: the readout operator needs a diffusers UNet")
    return [resnet for block in blocks for resnet in getattr(block, "resnets", [])]


def feature_channels(unet: nn.Module) -> list[int]:
    """Output channels of every up-block ResNet layer, in up-block order (what the readout head expects)."""
    return [int(resnet.out_channels) for resnet in _up_resnets(unet)]


#: the collector active on each UNet (by id), so that a tiled denoiser can hand it whole-image features
_ACTIVE: dict[int, UNetFeatureHooks] = {}


def active_hooks(unet: nn.Module) -> UNetFeatureHooks | None:
    """The :class:`UNetFeatureHooks` collecting from ``unet`` now, if any."""
    return _ACTIVE.get(id(unet))


class UNetFeatureHooks:
    """Context manager: while active, each UNet call appends its up-block ResNet outputs to ``features``.

    Call :meth:`clear` before each UNet pass; ``features`` keeps gradients attached, so guidance can
    back-propagate through them into the UNet input.
    """

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self.features: list[Tensor] = []
        self._handles: list = []

    def _hook(self, module: nn.Module, inputs, output) -> None:
        self.features.append(output[0] if isinstance(output, tuple) else output)

    def clear(self) -> None:
        self.features = []

    def __enter__(self) -> UNetFeatureHooks:
        self.clear()
        self._handles = [resnet.register_forward_hook(self._hook) for resnet in _up_resnets(self.unet)]
        _ACTIVE[id(self.unet)] = self
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        _ACTIVE.pop(id(self.unet), None)
