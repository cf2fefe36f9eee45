"""The one contract every latent operator kind implements, so sampling and training call all kinds alike.

A kind declares which inputs it reads (:attr:`LatentOperator.reads`), how ``silo train-operator`` trains it
(:attr:`LatentOperator.training_defaults`) and turns one :class:`OperatorInputs` into its own ``forward``
call (:meth:`LatentOperator.forward_arguments`), conditioning included. Callers build the inputs they have
and call ``operator.apply(inputs, prior)``; none of them branches on the kind. Each kind keeps its
``forward`` signature, which the published checkpoints' golden tests and older callers use.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from silo.errors import SiloError

#: every input an operator kind may read, in the order their absence is reported
INPUT_NAMES = ("z0", "features", "mask", "kernel")
_DESCRIBED = {
    "z0": "the clean-latent estimate z0",
    "features": "the prior UNet's decoder features",
    "mask": "the inpainting mask",
    "kernel": "the degradation's blur kernel",
}
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass(frozen=True, kw_only=True)
class OperatorInputs:
    """Everything any operator kind may read at one call; a kind ignores what is not in its ``reads``.

    ``z0``: the clean-latent estimate (B x C x h x w); ``features``: the prior UNet's up-block ResNet outputs
    (for kinds that read them); ``noise_sigma``: the measurement noise std on the [0, 1] image scale;
    ``mask``: B x 1 x H x W pixels, 1 = known; ``kernel``: the blur kernel(s), ``k x k`` or ``B x k x k``
    pixels; ``latent_size``: the measurement latent's ``(h, w)``, the output size (default: ``z0``'s).
    """

    noise_sigma: float
    z0: Tensor | None = None
    features: Sequence[Tensor] | None = None
    mask: Tensor | None = None
    kernel: Tensor | None = None
    latent_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        size = self.latent_size
        if size is None and self.z0 is not None:
            size = self.z0.shape[-2:]
        if size is not None:
            object.__setattr__(self, "latent_size", (int(size[0]), int(size[1])))

    @property
    def batch(self) -> int:
        """Images in the batch, from ``z0`` or else the first feature map."""
        if self.z0 is not None:
            return int(self.z0.shape[0])
        if self.features:
            return int(self.features[0].shape[0])
        raise SiloError("operator inputs hold neither z0 nor UNet features: the batch size is unknown")

    def without(self, *names: str) -> OperatorInputs:
        """A copy with the named inputs removed (``None``)."""
        unknown = set(names) - set(INPUT_NAMES)
        if unknown:
            raise ValueError(f"unknown operator inputs {sorted(unknown)} (known: {', '.join(INPUT_NAMES)})")
        return dataclasses.replace(self, **{name: None for name in names})


@dataclass(frozen=True)
class TrainingDefaults:
    """What ``silo train-operator`` uses for a kind unless told otherwise.

    ``noise_sigma_max``: noise std drawn per batch from U(0, this), [0, 1] scale; ``lr`` and ``optimizer``
    (a key of :data:`OPTIMIZERS`); ``frozen_parameters``: ``fnmatch`` patterns of parameter names that are
    never trained (parts the SILO objective leaves unused, whose missing gradients would stall DDP).
    """

    noise_sigma_max: float
    lr: float
    optimizer: str
    frozen_parameters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
        if not 0 < self.noise_sigma_max <= 0.5 or not self.lr > 0:
            raise ValueError(f"training defaults out of range: {self}")

    def optimizer_class(self) -> Callable[..., torch.optim.Optimizer]:
        return OPTIMIZERS[self.optimizer]


class SigmaEmbedder(Protocol):
    """What ``apply`` needs of the prior: the UNet's embedding of a noise level (see ``Prior.sigma_embedding``)."""

    def sigma_embedding(self, sigma: float | Tensor, batch: int | None = None) -> Tensor: ...


class LatentOperator:
    """Mixin for operator classes (before ``ModelMixin`` in the bases): the contract every kind implements.

    Class attributes a kind sets: ``kind`` (its registry key), ``can_read`` (every input some instance of the
    kind may read), ``reads`` (what this instance reads; a property where the config decides),
    ``training_defaults`` (``None``: not trainable by ``silo train-operator``) and ``published_marker`` (a
    state-dict key only the kind's published checkpoints hold, or ``None``).
    """

    kind: ClassVar[str]
    can_read: ClassVar[frozenset[str]]
    reads: frozenset[str]
    training_defaults: ClassVar[TrainingDefaults | None] = None
    published_marker: ClassVar[str | None] = None

    # -- calling -----------------------------------------------------------------------------------
    def apply(
        self, inputs: OperatorInputs, prior: SigmaEmbedder | None = None, *, call: Callable[..., Tensor] | None = None
    ) -> Tensor:
        """``H(inputs)`` with the kind's own conditioning: the one call sampling and training make.

        ``prior`` gives the UNet's noise-level embedding to kinds that use it (any object with
        ``sigma_embedding(sigma, batch)``; ``None`` is fine for kinds that embed the noise level themselves).
        ``call`` runs ``forward`` in place of the operator itself: the DDP wrapper around it while training.
        Inputs are cast to the operator's dtype. ``nn.Module.apply(fn)`` still works (this name shadows it).
        """
        if not isinstance(inputs, OperatorInputs):
            if callable(inputs) and prior is None and call is None:
                return torch.nn.Module.apply(self, inputs)
            raise TypeError(f"{type(self).__name__}.apply takes OperatorInputs, got {type(inputs).__name__}")
        self.check_inputs(inputs)
        args, kwargs = self.forward_arguments(inputs, prior)
        return (self if call is None else call)(*args, **kwargs)

    def forward_arguments(self, inputs: OperatorInputs, prior: SigmaEmbedder | None) -> tuple[tuple, dict[str, Any]]:
        """``forward``'s positional and keyword arguments for ``inputs`` (which passed :meth:`check_inputs`)."""
        raise NotImplementedError

    def check_inputs(self, inputs: OperatorInputs) -> None:
        """Raise a one-line :class:`SiloError` for the first input this operator reads that is missing."""
        for name in INPUT_NAMES:
            if name in self.reads and getattr(inputs, name) is None:
                raise SiloError(self.missing_input(name))

    def missing_input(self, name: str) -> str:
        """The error line when ``name`` is missing; kinds override it where they can say more."""
        return f"the {self.kind} operator reads {_DESCRIBED[name]}, but none was given"

    def unet_sigma_embedding(self, inputs: OperatorInputs, prior: SigmaEmbedder | None) -> Tensor | None:
        """The UNet's float32 embedding of the noise level, or ``None`` for a config that is not sigma-conditioned."""
        if not self.config.get("sigma_conditioned", True):
            return None
        if prior is None:
            raise SiloError(
                f"the {self.kind} operator is sigma-conditioned: pass the prior, whose UNet embeds the noise level"
            )
        return prior.sigma_embedding(inputs.noise_sigma, inputs.batch).float()

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def init_keys(cls) -> list[str]:
        """The constructor's arguments (the config keys)."""
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    @classmethod
    def for_prior(
        cls, prior, norm_size: int, mask: bool = False, kernel: bool = False, **overrides: Any
    ) -> LatentOperator:
        """A fresh operator sized for ``prior`` (latent channels, embedding width, UNet feature channels where
        read), reading the inpainting mask and/or the blur kernel where asked; ``overrides`` set the rest."""
        for name, wanted in (("mask", mask), ("kernel", kernel)):
            if wanted and name not in cls.can_read:
                raise SiloError(f"a {cls.kind} operator cannot read {_DESCRIBED[name]}")
        fixed: dict[str, Any] = dict(
            latent_channels=prior.latent_channels,
            embedding_dim=prior.embedding_dim,
            norm_size=norm_size,
            mask_channel=mask,
        )
        if "features" in cls.can_read:
            from silo.operators.features import feature_channels

            fixed["feature_channels"] = feature_channels(prior.unet)
        if kernel:
            fixed["blur_kernel_scale"] = prior.vae_scale
        keys = set(cls.init_keys())
        return cls(**{**{k: v for k, v in fixed.items() if k in keys}, **overrides})

    @classmethod
    def config_from_published(cls, state: dict[str, Tensor], path: Path) -> dict[str, Any]:
        """Constructor arguments read from a published checkpoint's tensor shapes (kinds with a published format)."""
        raise SiloError(f"the {cls.kind} operator has no published checkpoint format")


def state_shape(state: dict[str, Tensor], key: str, path: Path) -> torch.Size:
    """``state[key].shape``, or a :class:`SiloError` naming the checkpoint when the key is missing."""
    if key not in state:
        raise SiloError(f"operator checkpoint {path}: missing key {key!r}")
    return state[key].shape


def call_operator(operator: torch.nn.Module, inputs: OperatorInputs, prior: SigmaEmbedder | None) -> Tensor:
    """``operator.apply(inputs, prior)``; a plain module without the contract (a hand-written operator) is
    called the way a CNN operator's ``forward`` is: ``operator(z0, sigma_emb, mask=None)``."""
    if isinstance(operator, LatentOperator):
        return operator.apply(inputs, prior)
    if inputs.z0 is None:
        raise SiloError(f"{type(operator).__name__} is called on z0, but none was given")
    sigma_emb = None
    if getattr(getattr(operator, "config", None), "sigma_conditioned", True):
        sigma_emb = prior.sigma_embedding(inputs.noise_sigma, inputs.batch).float()
    return operator(inputs.z0.float(), sigma_emb, mask=None)


__all__ = [
    "INPUT_NAMES",
    "OPTIMIZERS",
    "OperatorInputs",
    "TrainingDefaults",
    "SigmaEmbedder",
    "LatentOperator",
    "call_operator",
    "state_shape",
]
