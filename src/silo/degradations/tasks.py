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


#: the ``sampling`` keys a task file may set, and their types (``silo.settings.resolve`` reads them)
SAMPLING_FIELDS: dict[str, type] = {"eta": float, "start_strength": float, "clamp_measurement": bool}


def _typed(value: Any, kind: Any, where: str) -> Any:
    """``value`` checked against ``kind`` (int, float, bool, str): one line naming the field if it is not one.
    Numbers must be finite; an int field takes a float only if it is whole (``scale: 4.0``)."""
    import math

    names = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
    ok = True
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind in (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise SiloError(f"{where} must be a finite number, got {value}")
        if ok and kind is int:
            ok = float(value).is_integer()
            value = int(value) if ok else value
        elif ok:
            value = float(value)
    elif kind is str:
        ok = isinstance(value, str)
    if not ok:
        raise SiloError(f"{where} must be {names.get(kind, kind)}, got {value!r}")
    return value


def _setting_types(cls: type) -> dict[str, Any]:
    """The degradation's settings and their types, read from its constructor's signature."""
    import inspect
    import typing

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: check names only
        hints = {}
    params = inspect.signature(cls.__init__).parameters
    return {
        n: hints.get(n, Any)
        for n, p in params.items()
        if n not in ("self", "noise_sigma") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_degradation(spec: dict[str, Any], noise_sigma: float = 0.0, source: str = "") -> Degradation:
    """Instantiate a degradation from ``{"type": name, **settings}``, each setting checked against the type its
    constructor declares."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise SiloError(f"{source}: 'degradation' must be a mapping with a 'type' key")
    settings = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in DEGRADATIONS:
        raise SiloError(f"{source}: unknown degradation type {kind!r} (known: {', '.join(DEGRADATIONS)})")
    cls = DEGRADATIONS[kind]
    types = _setting_types(cls)
    unknown = sorted(str(k) for k in set(settings) - set(types))
    if unknown:
        takes = sorted(types) or "none"
        raise SiloError(f"{source}: bad settings for degradation {kind!r}: no setting(s) {unknown} (it takes {takes})")
    for key, value in settings.items():
        if types[key] in (int, float, bool, str):
            settings[key] = _typed(value, types[key], f"{source}: degradation.{key}")
    try:
        return cls(noise_sigma=noise_sigma, **settings)
    except TypeError as err:
        raise SiloError(f"{source}: bad settings for degradation {kind!r}: {err}") from None


def task_from_dict(data: Any, name: str, source: str) -> Task:
    """A task from a parsed task file, every field checked: names are text, numbers finite numbers, the noise
    level >= 0, sampling keys known and typed; one line naming the field otherwise."""
    if not isinstance(data, dict):
        raise SiloError(f"{source}: a task file must be a YAML mapping")
    unknown = set(data) - {"description", "degradation", "noise_sigma", "sampling", "name"}
    if unknown:
        raise SiloError(f"{source}: unknown keys {sorted(map(str, unknown))}")
    noise = _typed(data.get("noise_sigma", 0.0), float, f"{source}: noise_sigma")
    if noise < 0:
        raise SiloError(f"{source}: noise_sigma must be >= 0, got {noise}")
    sampling = data.get("sampling") or {}
    if not isinstance(sampling, dict):
        raise SiloError(f"{source}: 'sampling' must be a mapping")
    bad = sorted(str(k) for k in set(sampling) - set(SAMPLING_FIELDS))
    if bad:
        raise SiloError(f"{source}: unknown sampling keys {bad} (known: {', '.join(SAMPLING_FIELDS)})")
    sampling = {k: _typed(v, SAMPLING_FIELDS[k], f"{source}: sampling.{k}") for k, v in sampling.items()}
    if sampling.get("eta", 0) < 0:
        raise SiloError(f"{source}: sampling.eta must be >= 0, got {sampling['eta']}")
    if "start_strength" in sampling and not 0 < sampling["start_strength"] <= 1:
        raise SiloError(f"{source}: sampling.start_strength must be in (0, 1], got {sampling['start_strength']}")
    task_name = _typed(data.get("name", name), str, f"{source}: name")
    if not task_name.strip():
        raise SiloError(f"{source}: name must not be empty")
    return Task(
        name=task_name,
        description=_typed(data.get("description", ""), str, f"{source}: description"),
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
        name, source = path.stem, str(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise SiloError(f"{source}: not a UTF-8 text file (byte {err.start})") from None
        except OSError as err:
            raise SiloError(f"{source}: cannot read ({err.strerror or err})") from None
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
        import math

        if not math.isfinite(noise_sigma) or noise_sigma < 0:
            raise SiloError(f"--noise-sigma must be a finite number >= 0, got {noise_sigma}")
        task.degradation.noise_sigma = float(noise_sigma)
    return task
