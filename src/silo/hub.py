"""Latent operators on the Hugging Face Hub: named by repo id, and described by a Hub model card.

An operator folder written by ``save_pretrained`` (``config.json``, safetensors, ``model_card.json``) uploads to
the Hub as it is. :func:`resolve_operator` turns ``owner/name`` (optionally ``owner/name/subfolder``, for a repo
holding one operator per folder) into a local folder through ``huggingface_hub`` and its cache, so
``--operator`` and :func:`silo.load_operator` take Hub ids wherever they take folders. With
``HF_HUB_OFFLINE=1`` only the local cache is read. :func:`write_model_card` writes the ``README.md`` with YAML
metadata that the Hub shows and indexes (library, tags, base prior, task, data, metrics).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from silo.errors import SiloError

#: the distribution name on the package index (``pip install silo-restore``); the package is ``import silo``
LIBRARY_NAME = "silo-restore"
#: published checkpoint files: fetched alone from a repo, not as a folder
_FILE_SUFFIXES = (".pt", ".pth", ".ckpt")


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the local cache only (read at call time, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> str | None:
    """The Hub cache as the environment names it now (``HF_HUB_CACHE``, else ``HF_HOME/hub``); None: the
    library's default. Read at call time so that a cache chosen after ``huggingface_hub`` was imported counts."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def split_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``owner/name[/subfolder...]`` -> ``(repo_id, subfolder)``; None when ``spec`` cannot be a Hub id (a path
    such as ``./ops``, ``/abs/ops`` or ``~/ops``, or a single name)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(spec)
    if text.startswith((".", "/", "~")) or "\\" in text or "=" in text:
        return None
    parts = [p for p in text.split("/") if p]
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        return None
    repo_id = "/".join(parts[:2])
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id, "/".join(parts[2:]) or None


def resolve_operator(spec: str | os.PathLike[str], subfolder: str | None = None, revision: str | None = None) -> Path:
    """A local operator folder (or published ``.pt`` file) for ``spec``: itself when it exists on disk or
    cannot be a Hub id, else the Hub repo ``owner/name`` (with ``subfolder``, given here or as
    ``owner/name/subfolder``) from the Hub cache, downloading only that folder when online. Raises
    :class:`SiloError` naming ``spec`` when the repo cannot be had (offline: when it is not in the cache)."""
    path = Path(spec)
    if path.exists() and subfolder is None:
        return path
    parsed = split_hub_id(str(spec))
    if parsed is None:
        return path  # not a Hub id: the loader says what is wrong with the path
    repo_id, inner = parsed
    sub = "/".join(p for p in (inner, subfolder) if p) or None
    where = f"{repo_id}" + (f" (subfolder {sub})" if sub else "")
    try:
        local = _fetch(repo_id, sub, revision)
    except SiloError:
        raise
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises many types; the first line says which
        if offline():
            raise SiloError(
                f"operator {spec}: no such folder, and Hub repo {where} is not in the local Hub cache "
                "(HF_HUB_OFFLINE=1: nothing is downloaded)"
            ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SiloError(f"operator {spec}: Hub repo {where} cannot be fetched: {first}") from None
    if local.is_dir() and not (local / "config.json").is_file():
        raise SiloError(f"operator {spec}: Hub repo {where} holds no operator (no config.json)")
    return local


def _fetch(repo_id: str, sub: str | None, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    common: dict[str, Any] = {"revision": revision, "cache_dir": cache_dir(), "local_files_only": offline()}
    if sub is not None and sub.endswith(_FILE_SUFFIXES):
        return Path(hf_hub_download(repo_id, sub, **common))
    root = snapshot_download(repo_id, allow_patterns=[f"{sub}/*"] if sub else None, **common)
    local = Path(str(root)) / sub if sub else Path(str(root))
    if not local.is_dir():
        cached = " in the local Hub cache (HF_HUB_OFFLINE=1)" if offline() else ""
        raise SiloError(f"operator {repo_id}/{sub}: the Hub repo {repo_id} has no folder {sub}{cached}")
    return local


def _hub_name(source: Any) -> str | None:
    """``source`` if it names a Hub repo (not a local path), else None: only those go in ``base_model`` and
    ``datasets``, which the Hub links."""
    if not source or Path(str(source)).exists():
        return None
    parsed = split_hub_id(str(source))
    return parsed[0] if parsed is not None and parsed[1] is None else None


def _shown(source: Any) -> str:
    """A source as the card shows it: a Hub id as it is, a local path by its last part only (no machine paths)."""
    if not source:
        return "unknown"
    return str(source) if _hub_name(source) else Path(str(source)).name


def model_card_text(card: dict[str, Any], name: str) -> str:
    """The Hub ``README.md`` (YAML metadata + text) of an operator from its ``model_card.json`` contents."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    task = card.get("task") or "custom"
    kind = card.get("kind") or "operator"
    prior, data = card.get("prior"), (card.get("data") or {})
    data_source = data.get("source")
    loss_name = card.get("loss") or "l1"
    final = card.get("final_validation_loss")
    results = None
    if final is not None:
        data_label = _shown(data_source)
        results = [
            EvalResult(
                task_type="image-to-image",
                dataset_type=_hub_name(data_source) or data_label,
                dataset_name=data_label,
                dataset_split="validation",
                metric_type=loss_name,
                metric_name=f"validation latent {loss_name.upper()} loss (lower is better)",
                metric_value=float(final),
            )
        ]
    dataset_id = _hub_name(data_source)
    metadata = ModelCardData(
        library_name=LIBRARY_NAME,
        tags=["silo", "latent-operator", "inverse-problems", "image-restoration", f"task-{task}", f"operator-{kind}"],
        base_model=_hub_name(prior),
        datasets=[dataset_id] if dataset_id else None,
        metrics=[loss_name],
        pipeline_tag="image-to-image",
        model_name=name,
        eval_results=results,
        silo={
            "task": task,
            "operator_kind": kind,
            "prior": _shown(prior),
            "data": _shown(data_source),
            "train_images": data.get("train_images"),
            "validation_images": data.get("validation_images"),
            "steps": card.get("steps"),
            "noise_sigma_range": card.get("noise_sigma_range"),
        },
    )
    losses = card.get("validation_losses") or {}
    loss_rows = "\n".join(f"| {step} | {value:.4f} |" for step, value in losses.items() if value is not None)
    body = f"""
# {name}: a SILO latent operator ({kind}) for `{task}`

A latent operator `H` with `H(E(x)) ≈ E(A(x) + n)` for the degradation `{task}`, trained for the prior
`{_shown(prior)}`. SILO guides latent diffusion with it in latent space only (*Solving Inverse Problems with
Latent Operators*, ICCV 2025); the decoder runs once, at the end.

## Use

With silo installed (the distribution `{LIBRARY_NAME}`):

```bash
silo restore photo.png --task {task} --prior {_shown(prior)} --operator OWNER/{name}
```

```python
import silo

operator = silo.load_operator("OWNER/{name}")
pipe = silo.SiloPipeline.from_pretrained("{_shown(prior)}", operator="OWNER/{name}")
```

`model_card.json` beside this file holds every training setting and the sampling settings tuned for it, which
silo reads as the operator's defaults.

## Training

- data: `{_shown(data_source)}` ({data.get("train_images")} training, {data.get("validation_images")} validation
  images), crops of {card.get("crop_size")} px
- {card.get("steps")} steps, batch {card.get("effective_batch_size") or card.get("batch_size")}, learning rate
  {card.get("lr")}, loss {loss_name}; measurement noise std drawn from {card.get("noise_sigma_range")} on the
  [0, 1] image scale

| step | validation {loss_name} loss |
| --- | --- |
{loss_rows or "| - | - |"}
"""
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n{body}"))


def write_model_card(folder: str | os.PathLike[str], card: dict[str, Any]) -> Path:
    """Write ``folder/README.md``, the Hub model card, atomically, so the operator folder uploads as it is."""
    folder = Path(folder)
    target = folder / "README.md"
    text = model_card_text(card, folder.resolve().name)
    fd, tmp = tempfile.mkstemp(prefix=".README.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


__all__ = [
    "LIBRARY_NAME",
    "cache_dir",
    "model_card_text",
    "offline",
    "resolve_operator",
    "split_hub_id",
    "write_model_card",
]
