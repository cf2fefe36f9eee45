"""The models shipped inside the package (silo-tiny): where they are and which operator each task uses."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from silo.errors import SiloError


def shipped_root() -> Path:
    return Path(str(resources.files("silo"))) / "weights" / "silo-tiny"


def shipped_card() -> dict[str, Any] | None:
    card = shipped_root() / "model_card.json"
    return json.loads(card.read_text()) if card.is_file() else None


def default_prior_path() -> Path:
    path = shipped_root() / "prior"
    if not (path / "unet").is_dir():
        raise SiloError("this build ships no silo-tiny prior yet: pass --prior (a Hub id or a diffusers folder)")
    return path


#: the name that stands for the shipped prior wherever a prior is asked for (--prior silo-tiny)
SHIPPED_PRIOR_NAME = "silo-tiny"


def prior_location(name_or_path: str | Path) -> str:
    """``silo-tiny`` (where no such local folder exists) is the shipped prior's folder; anything else as given."""
    text = str(name_or_path)
    if text == SHIPPED_PRIOR_NAME and not Path(text).exists():
        return str(default_prior_path())
    return text


def is_shipped_prior(name_or_path: str | Path | None) -> bool:
    """Whether a --prior value is the shipped silo-tiny prior (its name or its folder)."""
    if name_or_path is None:
        return False
    try:
        path = Path(prior_location(name_or_path))
        return path.is_dir() and path.resolve() == (shipped_root() / "prior").resolve()
    except SiloError:  # no shipped prior in this build
        return False


def default_operator_path(task: str, kind: str | None = None) -> Path:
    """The shipped operator for a task: ``kind`` if given, else the better kind per the model card."""
    card = shipped_card() or {}
    choice = kind or card.get("default_operator", {}).get(task)
    candidates = [choice] if choice else ["cnn", "readout"]
    for k in candidates:
        path = shipped_root() / "operators" / f"{task}-{k}"
        if (path / "config.json").is_file():
            return path
    raise SiloError(f"no shipped operator for task {task!r}{f' ({kind})' if kind else ''}: pass --operator FOLDER")
