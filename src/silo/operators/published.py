"""Load the authors' published operator checkpoints (pickled ``.pt``) into our operator classes.

Three formats (parameter names in ``shared/reference/silo-checkpoint-keys.json``):
- CNN (``cnn_sigma_layernorm``): a plain state dict;
- readout (``rg_sigma``, ``rg_sigma_condinpaint``): ``{"aggregation_network": state_dict, ...}``; the
  mask channel is detected from ``output_head.0.weight``'s input channels;
- preserve (``preserve_ldn``): a plain state dict.
The format is detected from the keys; the configuration is read from the tensor shapes, so the same
code loads variants trained for other latent channel counts or embedding widths.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from silo.errors import SiloError
from silo.operators import OPERATOR_CLASSES

#: containers around the state dict: the readout files' entry, then common training-script ones
_WRAPPERS = ("aggregation_network", "state_dict", "model")
_MARKERS = {
    "cnn": "processing.0.weight",
    "readout": "mixing_weights",
    "preserve": "identity_gate.0.weight",
}


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict inside a published file (safe unpickling only), unwrapped from its container."""
    path = Path(path)
    if not path.is_file():
        raise SiloError(f"operator checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SiloError(f"cannot read operator checkpoint {path}: {first}") from None
    for wrapper in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SiloError(f"operator checkpoint {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect_kind(state: dict[str, torch.Tensor]) -> str | None:
    """``"cnn"``, ``"readout"`` or ``"preserve"`` from marker keys; ``None`` when none fits."""
    found = [kind for kind, key in _MARKERS.items() if key in state]
    return found[0] if len(found) == 1 else None


def _shape(state: dict, key: str, path: Path) -> torch.Size:
    if key not in state:
        raise SiloError(f"operator checkpoint {path}: missing key {key!r}")
    return state[key].shape


def _cnn_config(state: dict, path: Path) -> dict:
    sigma = "sigma_condition_precondition.0.weight" in state
    extra = int(sigma)
    outs = [_shape(state, f"encoder.{i}.weight", path)[0] for i in (0, 3, 6, 9)]
    cfg = {
        "latent_channels": int(_shape(state, "encoder.0.weight", path)[1]) - extra,
        "sigma_conditioned": sigma,
        "channels": [int(c) - extra for c in outs[:-1]] + [int(outs[-1])],
        "norm_size": int(_shape(state, "encoder.1.weight", path)[-1]),
    }
    if sigma:
        hidden, emb = _shape(state, "sigma_condition_precondition.0.weight", path)
        cfg.update(embedding_dim=int(emb), sigma_hidden=int(hidden))
    return cfg


def _readout_config(state: dict, path: Path) -> dict:
    sigma = "sigma_emb_linear.weight" in state
    extra = int(sigma)
    count = int(_shape(state, "mixing_weights", path)[0])
    mid, emb = _shape(state, "bottleneck_layers.0.emb_layers.weight", path)
    proj = int(_shape(state, "bottleneck_layers.0.conv3.weight", path)[0])
    head0 = _shape(state, "output_head.0.weight", path)
    mask = int(head0[1]) - proj - extra
    if mask not in (0, 1):
        raise SiloError(f"operator checkpoint {path}: output_head.0.weight has {head0[1]} input channels, "
                        f"expected {proj + extra} or {proj + extra + 1}")
    cfg = {
        "latent_channels": int(_shape(state, "output_head.4.weight", path)[0]),
        "embedding_dim": int(emb),
        "feature_channels": [
            int(_shape(state, f"bottleneck_layers.{i}.conv1.weight", path)[1]) - extra for i in range(count)
        ],
        "bottleneck_channels": int(mid),
        "projection_dim": proj,
        "head_channels": [int(head0[0]), int(_shape(state, "output_head.2.weight", path)[0])],
        "mask_channel": bool(mask),
        "sigma_conditioned": sigma,
    }
    if sigma:
        cfg["norm_size"] = int(_shape(state, "sigma_emb_norm.weight", path)[-1])
    return cfg


def _preserve_config(state: dict, path: Path) -> dict:
    pos = _shape(state, "pos_embedding.positional_embedding", path)
    return {
        "latent_channels": int(_shape(state, "final_conv.weight", path)[0]),
        "channels": [int(_shape(state, f"blocks.{i}.conv1.weight", path)[0]) for i in range(3)],
        "noise_embedding_dim": int(_shape(state, "blocks.0.noise_proj.weight", path)[1]),
        "position_channels": int(pos[0]),
        "norm_size": int(pos[-1]),
    }


_CONFIG_READERS = {"cnn": _cnn_config, "readout": _readout_config, "preserve": _preserve_config}


def _load_state(operator: torch.nn.Module, state: dict, path: Path) -> None:
    own = operator.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
           if k in state and state[k].shape != v.shape]
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
            f"operator checkpoint {path} is not a published SILO operator (no CNN, readout or preserve keys; "
            f"first keys: {_few(sorted(state), 3)})"
        )
    if kind is not None and kind != detected:
        raise SiloError(f"operator checkpoint {path} holds a {detected} operator, not {kind}")
    config = _CONFIG_READERS[detected](state, path)
    operator = OPERATOR_CLASSES[detected](**config)
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
