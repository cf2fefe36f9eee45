"""Typed readers of the two cards that carry sampling defaults.

- the prior card, ``silo_prior.json`` in a prior folder: the prior's default steps, scheduler, warm start and
  whether the [-4, 4] clamp of ``E(y)`` fits its latent space;
- the operator card, ``model_card.json`` in an operator folder: the task and kind it was trained for and the
  step size and warm start tuned for it (``recommended_eta`` at image side ``recommended_eta_size``).

``Prior.from_pretrained`` and the operator loader attach their card (``prior.card``, ``operator.card``);
settings resolution (:mod:`silo.settings`) reads only these objects, never the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silo.errors import SiloError

PRIOR_CARD = "silo_prior.json"
OPERATOR_CARD = "model_card.json"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SiloError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise SiloError(f"{path}: expected a JSON object")
    return data


def _number(path: Path, data: dict, key: str, kind: type = float) -> Any:
    value = data.get(key)
    if value is None:
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise SiloError(f"{path}: {key} must be a number, got {value!r}") from None
    if kind is int and number != value:
        raise SiloError(f"{path}: {key} must be an integer, got {value!r}")
    return number


def _text(value: Any) -> str | None:
    """A card's text field; anything else (a shipped task's degradation settings, say) is not one."""
    return value if isinstance(value, str) else None


def _method_options(path: Path, value: Any) -> dict[str, dict[str, dict[str, float]]]:
    """``method_options`` of a prior card: method -> task -> option -> number."""
    if value is None:
        return {}
    where = f"{path}: method_options"
    if not isinstance(value, dict):
        raise SiloError(f"{where} must map methods to tasks to options, got {type(value).__name__}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, tasks in value.items():
        if not isinstance(tasks, dict):
            raise SiloError(f"{where}.{method} must map tasks to options")
        out[method] = {}
        for task, options in tasks.items():
            if not isinstance(options, dict):
                raise SiloError(f"{where}.{method}.{task} must map option names to numbers")
            out[method][task] = {k: _number(path, options, k) for k in options}
    return out


@dataclass(frozen=True)
class PriorCard:
    """A prior's sampling defaults; every field None when the card does not set it."""

    name: str = ""
    default_steps: int | None = None
    default_scheduler: str | None = None
    default_start_strength: float | None = None
    clamp_measurement: bool | None = None
    #: step sizes tuned for this prior, per method and task: ``{"ldps": {"inpaint_center": {"zeta": 1.0}}}``
    method_options: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | Path | None) -> PriorCard:
        if folder is None or not Path(str(folder)).is_dir():
            return cls(name=str(folder or ""))
        path = Path(str(folder)) / PRIOR_CARD
        data = _read(path)
        clamp = data.get("clamp_measurement")
        if clamp is not None and not isinstance(clamp, bool):
            raise SiloError(f"{path}: clamp_measurement must be true or false, got {clamp!r}")
        steps = _number(path, data, "default_steps", int)
        if steps is not None and steps < 1:
            raise SiloError(f"{path}: default_steps must be >= 1, got {steps}")
        scheduler = data.get("default_scheduler")
        if scheduler is not None and not isinstance(scheduler, str):
            raise SiloError(f"{path}: default_scheduler must be a name, got {scheduler!r}")
        return cls(
            name=str(data.get("name") or Path(str(folder)).name),
            default_steps=steps,
            default_scheduler=scheduler,
            default_start_strength=_number(path, data, "default_start_strength"),
            clamp_measurement=clamp,
            method_options=_method_options(path, data.get("method_options")),
        )

    def tuned_options(self, method: str, task: str) -> dict[str, float]:
        """The options this card tunes for ``method`` on ``task`` (empty when it tunes none)."""
        return dict(self.method_options.get(method, {}).get(task, {}))

    @property
    def label(self) -> str:
        return f"prior card {self.name}" if self.name else "prior card"


@dataclass(frozen=True)
class OperatorCard:
    """What an operator was trained for and the sampling settings tuned for it."""

    name: str = ""
    task: str | None = None
    kind: str | None = None
    recommended_eta: float | None = None
    recommended_eta_size: int | None = None
    recommended_start_strength: float | None = None
    degradation: str | None = None  # a user degradation's MODULE:CALLABLE, as given to silo train-operator
    degradation_source_sha256: str | None = None  # and the SHA-256 of its source then

    @classmethod
    def read(cls, folder: str | Path | None) -> OperatorCard:
        if folder is None:
            return cls()
        folder = Path(str(folder))
        if not folder.is_dir():  # a published .pt file carries no card
            return cls(name=folder.stem)
        path = folder / OPERATOR_CARD
        data = _read(path)
        size = _number(path, data, "recommended_eta_size")
        if size is not None and (size <= 0 or size != int(size)):
            raise SiloError(f"{path}: recommended_eta_size must be a positive integer, got {size:g}")
        eta = _number(path, data, "recommended_eta")
        return cls(
            name=folder.name,
            task=data.get("task"),
            kind=data.get("kind"),
            recommended_eta=eta,
            recommended_eta_size=int(size) if size is not None and eta is not None else None,
            recommended_start_strength=_number(path, data, "recommended_start_strength"),
            degradation=_text(data.get("degradation")),
            degradation_source_sha256=_text(data.get("degradation_source_sha256")),
        )

    @property
    def label(self) -> str:
        return f"operator card {self.name}" if self.name else "operator card"
