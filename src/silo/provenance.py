"""Where a result was made: the device, the library versions, and content fingerprints of models and inputs."""

from __future__ import annotations

import hashlib
import platform

import torch

from silo.errors import SiloError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable device is a one-line error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SiloError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SiloError(f"device {name}: no CUDA GPU is available here")
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise SiloError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[name]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    from silo._version import __version__

    out = {"python": platform.python_version(), "silo": __version__}  # the distribution is silo-restore
    for pkg in ("torch", "diffusers", "accelerate", "transformers", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def tensor_digest(tensor: torch.Tensor, *more: torch.Tensor | None) -> str:
    """A content hash of tensors (shape, dtype and bytes): the identity of an input, a mask or a kernel."""
    h = hashlib.blake2b(digest_size=16)
    for t in (tensor, *more):
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint(*modules: torch.nn.Module | None) -> str | None:
    """A content hash of the modules' weights, computed once per module: what a result's identity names a
    model by (a folder's path or a Hub id says nothing of what it holds)."""
    present = [m for m in modules if m is not None]
    if not present:
        return None
    h = hashlib.blake2b(digest_size=16)
    for module in present:
        cached = getattr(module, "_silo_fingerprint", None)
        if cached is None:
            inner = hashlib.blake2b(digest_size=16)
            for name, t in sorted(module.state_dict().items()):
                inner.update(name.encode())
                inner.update(tensor_digest(t).encode())
            cached = inner.hexdigest()
            try:
                module._silo_fingerprint = cached
            except AttributeError:  # pragma: no cover - modules accept attributes
                pass
        h.update(cached.encode())
    return h.hexdigest()


def prior_fingerprint(prior) -> str:
    return fingerprint(prior.vae, prior.unet, prior.text_encoder) or ""
