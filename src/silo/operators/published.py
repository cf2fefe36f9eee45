"""Load the authors' published operator checkpoints (pickled ``.pt``) into our operator classes.

Three formats (parameter names in ``shared/reference/silo-checkpoint-keys.json``):
- CNN (``cnn_sigma_layernorm``): a plain state dict;
- readout (``rg_sigma``, ``rg_sigma_condinpaint``): ``{"aggregation_network": state_dict, ...}``; the
  mask channel is detected from ``output_head.0.weight``'s input channels;
- preserve (``preserve_ldn``): a plain state dict.
The kind is detected from the marker key each operator class declares (``published_marker``); the class
reads its configuration from the tensor shapes (``config_from_published``), so the same code loads
variants trained for other latent channel counts or embedding widths.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from silo.errors import SiloError
from silo.operators import OPERATOR_CLASSES

#: containers around the state dict: the readout files' entry, then common training-script ones
_WRAPPERS = ("aggregation_network", "state_dict", "model")


def _markers() -> dict[str, str]:
    """Each registered kind's marker key (kinds without a published format have none)."""
    return {kind: cls.published_marker for kind, cls in OPERATOR_CLASSES.items() if cls.published_marker}


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict inside a published file (safe unpickling only), unwrapped from its container."""
    path = Path(path)
    if not path.is_file():
        raise SiloError(f"operator checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # never torch's advice to retry unsafely: say what the file holds
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if not found:
            raise SiloError(f"cannot read operator checkpoint {path}: not a PyTorch checkpoint of tensors") from None
        what = f" ({found.group(1)})" if found else ""
        raise SiloError(
            f"cannot read operator checkpoint {path}: it holds Python objects other than tensors{what}; "
            "silo loads only tensors and never unpickles code (re-save its state_dict)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in first or "Weights only" in first:
            first = "not a plain checkpoint of tensors"
        raise SiloError(f"cannot read operator checkpoint {path}: {first}") from None
    for wrapper in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SiloError(f"operator checkpoint {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect_kind(state: dict[str, torch.Tensor]) -> str | None:
    """The registered kind whose marker key (``published_marker``) the state holds; ``None`` unless exactly one."""
    found = [kind for kind, key in _markers().items() if key in state]
    return found[0] if len(found) == 1 else None


def _load_state(operator: torch.nn.Module, state: dict, path: Path) -> None:
    own = operator.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if bad:
        problems.append(f"shape mismatches (checkpoint vs {operator.kind} operator) {_few(bad)}")
    if problems:
        fit = f"operator checkpoint {path} does not fit the {operator.kind} operator"
        raise SiloError(f"{fit}: " + "; ".join(problems))
    operator.load_state_dict({k: v.float() for k, v in state.items()})


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load_published_operator(path: str | os.PathLike, kind: str | None = None) -> torch.nn.Module:
    """Build the matching operator for a published ``.pt`` file and load its weights (eval mode, float32)."""
    path = Path(path)
    if kind is not None and kind not in OPERATOR_CLASSES:
        raise SiloError(f"unknown operator kind {kind!r} (known: {', '.join(OPERATOR_CLASSES)})")
    state = read_checkpoint(path)
    detected = detect_kind(state)
    if detected is None:
        raise SiloError(
            f"operator checkpoint {path} is not a published SILO operator (no {', '.join(_markers())} keys; "
            f"first keys: {_few(sorted(state), 3)})"
        )
    if kind is not None and kind != detected:
        raise SiloError(f"operator checkpoint {path} holds a {detected} operator, not {kind}")
    cls = OPERATOR_CLASSES[detected]
    operator = cls(**cls.config_from_published(state, path))
    _load_state(operator, state, path)
    operator.register_to_config(_name_or_path=str(path))
    return operator.eval()


def convert_published(src: str | os.PathLike, dst: str | os.PathLike, kind: str | None = None) -> torch.nn.Module:
    """Write a published checkpoint as our operator folder (safetensors + config.json); never overwrites."""
    dst = Path(dst)
    if dst.exists():
        raise SiloError(f"destination {dst} already exists; choose a new folder")
    operator = load_published_operator(src, kind)
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    try:
        operator.save_pretrained(str(tmp), safe_serialization=True)
        tmp.rename(dst)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return operator


__all__ = ["read_checkpoint", "detect_kind", "load_published_operator", "convert_published"]
