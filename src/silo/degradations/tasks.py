"""Task files: a degradation (which owns the noise level) and the sampler defaults, as small YAML files.

The shipped tasks live in ``silo/degradations/tasks/*.yaml``; a user may pass a path to their own file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from silo.degradations.base import Degradation, Identity
from silo.degradations.blur import GaussianBlur, MotionBlur
from silo.degradations.inpainting import Inpainting
from silo.degradations.jpeg import JPEG
from silo.degradations.super_resolution import SuperResolution
from silo.errors import SiloError

DEGRADATIONS: dict[str, type[Degradation]] = {
    "super_resolution": SuperResolution,
    "gaussian_blur": GaussianBlur,
    "motion_blur": MotionBlur,
    "inpainting": Inpainting,
    "jpeg": JPEG,
    "identity": Identity,
}


@dataclass
class Task:
    name: str
    description: str
    degradation: Degradation
    sampling: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def noise_sigma(self) -> float:
        """The degradation's noise level: it owns the noise, so the two cannot disagree."""
        return self.degradation.noise_sigma

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "degradation": self.degradation.describe(),
            "noise_sigma": self.noise_sigma,
            "sampling": dict(self.sampling),
            "source": self.source,
        }


def _task_dir():
    return resources.files("silo.degradations") / "tasks"


def list_tasks() -> list[str]:
    """Names of the shipped tasks."""
    return sorted(p.name[: -len(".yaml")] for p in _task_dir().iterdir() if p.name.endswith(".yaml"))


def build_degradation(spec: dict[str, Any], noise_sigma: float = 0.0, source: str = "") -> Degradation:
    """Instantiate a degradation from ``{"type": name, **settings}``."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise SiloError(f"{source}: 'degradation' must be a mapping with a 'type' key")
    settings = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    if kind not in DEGRADATIONS:
        raise SiloError(f"{source}: unknown degradation type {kind!r} (known: {', '.join(DEGRADATIONS)})")
    try:
        return DEGRADATIONS[kind](noise_sigma=noise_sigma, **settings)
    except TypeError as err:
        raise SiloError(f"{source}: bad settings for degradation {kind!r}: {err}") from None


def task_from_dict(data: Any, name: str, source: str) -> Task:
    if not isinstance(data, dict):
        raise SiloError(f"{source}: a task file must be a YAML mapping")
    unknown = set(data) - {"description", "degradation", "noise_sigma", "sampling", "name"}
    if unknown:
        raise SiloError(f"{source}: unknown keys {sorted(unknown)}")
    try:
        noise = float(data.get("noise_sigma", 0.0))
    except (TypeError, ValueError):
        raise SiloError(f"{source}: noise_sigma must be a number") from None
    sampling = data.get("sampling") or {}
    if not isinstance(sampling, dict):
        raise SiloError(f"{source}: 'sampling' must be a mapping")
    return Task(
        name=str(data.get("name", name)),
        description=str(data.get("description", "")),
        degradation=build_degradation(data.get("degradation"), noise, source),
        sampling=sampling,
        source=source,
    )


def load_task(name_or_path: str | Path, noise_sigma: float | None = None) -> Task:
    """A shipped task by name (``sr4``) or a YAML file by path; ``noise_sigma`` overrides the file's."""
    path = Path(name_or_path)
    if str(name_or_path).endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise SiloError(f"task file not found: {path}")
        text, name, source = path.read_text(), path.stem, str(path)
    else:
        resource = _task_dir() / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise SiloError(f"unknown task {name_or_path!r} (shipped: {', '.join(list_tasks())}; or give a .yaml path)")
        text, name, source = resource.read_text(), str(name_or_path), f"task {name_or_path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else "parse error"
        raise SiloError(f"{source}: malformed YAML ({first})") from None
    task = task_from_dict(data, name, source)
    if noise_sigma is not None:
        task.degradation.noise_sigma = float(noise_sigma)
    return task
