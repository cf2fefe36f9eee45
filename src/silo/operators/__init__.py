"""Latent operators ``H`` with ``H(E(x)) ~= E(A(x) + n)``, one class per kind in :data:`OPERATOR_CLASSES`.

Each is a diffusers ``ModelMixin`` + ``ConfigMixin`` (``save_pretrained``/``from_pretrained`` with
safetensors and config.json) whose parameter names equal the published SILO checkpoints; see
:mod:`silo.operators.published` for loading those ``.pt`` files. Every kind implements the contract of
:mod:`silo.operators.base` (``reads``, ``training_defaults``, ``apply(OperatorInputs, prior)``), so callers
never branch on the kind: :data:`OPERATOR_CLASSES` is the one list of kinds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from silo.errors import SiloError
from silo.operators.base import LatentOperator, OperatorInputs, TrainingDefaults, call_operator
from silo.operators.cnn import CNNOperator
from silo.operators.preserve import PreserveOperator
from silo.operators.readout import ReadoutOperator

#: the registry: every operator kind, by its ``kind``; adding a class here is all a new kind needs
OPERATOR_CLASSES: dict[str, type[LatentOperator]] = {
    cls.kind: cls for cls in (CNNOperator, ReadoutOperator, PreserveOperator)
}
_BY_CLASS_NAME = {cls.__name__: cls for cls in OPERATOR_CLASSES.values()}
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_PUBLISHED_SUFFIXES = (".pt", ".pth", ".ckpt")

__all__ = [
    "CNNOperator",
    "ReadoutOperator",
    "PreserveOperator",
    "OPERATOR_CLASSES",
    "LatentOperator",
    "OperatorInputs",
    "TrainingDefaults",
    "call_operator",
    "trainable_kinds",
    "load_operator",
    "check_compatible",
    "describe_operator",
]


def trainable_kinds() -> list[str]:
    """The kinds ``silo train-operator`` can train: those that declare training defaults."""
    return [kind for kind, cls in OPERATOR_CLASSES.items() if cls.training_defaults is not None]


def describe_operator(operator: torch.nn.Module) -> str:
    """``"readout operator (path)"`` for messages; the path when the operator was loaded from one."""
    source = operator.config.get("_name_or_path") if hasattr(operator, "config") else None
    name = f"{getattr(operator, 'kind', type(operator).__name__)} operator"
    return f"{name} {source}" if source else name


def load_operator(
    path_or_folder: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """Load an operator folder written by ``save_pretrained`` (or a published ``.pt`` file), in eval mode,
    with its card (``operator.card``: the task, kind and sampling settings tuned for it; a ``.pt`` has none).
    A Hub repo id ``owner/name[/subfolder]`` is read through the Hub cache (:func:`silo.hub.resolve_operator`)."""
    from silo.cards import OperatorCard
    from silo.hub import resolve_operator

    path = resolve_operator(path_or_folder)
    if path.is_file() and path.suffix in _PUBLISHED_SUFFIXES:
        from silo.operators.published import load_published_operator

        operator = load_published_operator(path)
        if dtype is not None:
            operator = operator.to(dtype)
        operator.card = OperatorCard.read(path)
    else:
        folder = path.parent if path.name == "config.json" else path
        operator = _load_folder(folder, dtype)  # from_pretrained applies dtype itself
        operator.card = OperatorCard.read(folder)
    if device is not None:
        operator = operator.to(device)
    return operator.eval()


def _load_folder(folder: Path, dtype: torch.dtype | None) -> torch.nn.Module:
    if not folder.is_dir():
        raise SiloError(f"operator folder {folder} does not exist")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise SiloError(f"operator folder {folder} has no config.json (write it with save_pretrained)")
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise SiloError(f"operator config {config_file} is not valid JSON: {err}") from None
    cls = _BY_CLASS_NAME.get(class_name)
    if cls is None:
        known = ", ".join(sorted(_BY_CLASS_NAME))
        raise SiloError(f"operator config {config_file}: unknown _class_name {class_name!r} (known: {known})")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise SiloError(f"operator folder {folder} has no weights file ({_WEIGHT_FILES[0]})")
    try:
        kwargs = {"torch_dtype": dtype} if dtype is not None else {}
        return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SiloError(f"cannot load operator from {folder}: {first}") from None


def check_compatible(
    operator: torch.nn.Module,
    latent_channels: int,
    embedding_dim: int,
    feature_channels: list[int] | None = None,
    vae_scale: int | None = None,
) -> None:
    """Raise :class:`SiloError` when ``operator`` was built for another prior (naming both sides)."""
    cfg, name = operator.config, describe_operator(operator)
    scale = cfg.get("blur_kernel_scale", 0)
    if scale and vae_scale is not None and scale != vae_scale:
        raise SiloError(f"{name} pools blur kernels by {scale} but the prior's VAE down-samples by {vae_scale}")
    if cfg.latent_channels != latent_channels:
        raise SiloError(
            f"{name} works on {cfg.latent_channels}-channel latents but the prior's VAE has {latent_channels}"
        )
    if getattr(operator, "uses_unet_sigma_embedding", True) and cfg.get("sigma_conditioned", True):
        if cfg.embedding_dim != embedding_dim:
            raise SiloError(
                f"{name} expects a {cfg.embedding_dim}-d noise-level embedding but the prior UNet's time "
                f"embedding is {embedding_dim}-d"
            )
    if getattr(operator, "needs_features", False) and feature_channels is not None:
        want, got = list(cfg.feature_channels), list(feature_channels)
        if want != got:
            raise SiloError(f"{name} reads UNet features with channels {want} but the prior UNet gives {got}")
