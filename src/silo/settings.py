"""Sampling settings, and the one place that decides them for every front door.

:func:`resolve` takes what the user asked for (CLI flags, Python keyword arguments), a preset, the prior's
card, the operator's card and the task, and returns the settings with the source of every value. The first
source in a setting's row that has a value wins:

=================  ===================================================================================
setting            precedence (first with a value wins)
=================  ===================================================================================
steps              request > preset > prior card ``default_steps`` > 999
scheduler          request > preset (ddpm) > prior card ``default_scheduler`` > ddpm
eta                request > preset > operator card ``recommended_eta`` (scaled by side) > task > 0.5
start_strength     request > preset (1) > operator card > prior card ``default_start_strength`` > task > 1
clamp_measurement  request > preset > prior card ``clamp_measurement`` > task > false
prompt, seed       request > preset > "" / 1000
method options     request > prior card ``method_options`` (per method and task) > the sampler's default
everything else    request > default
=================  ===================================================================================

The operator card is the card of the operator the task uses, for every method: a baseline starts where
SILO starts (same warm start, steps and scheduler) unless the user says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from silo.cards import OperatorCard, PriorCard
from silo.errors import SiloError
from silo.samplers.problem import SamplerSettings
from silo.samplers.registry import sampler_options

DEFAULT_SEED = 1000


#: the settings a request may set (``seed`` and ``method_options`` besides these)
SETTING_NAMES = tuple(f.name for f in fields(SamplerSettings) if f.name not in ("prompt_embeds", "eta_reference_size"))


@dataclass
class Resolved:
    """Settings as decided, with where each value came from (``{"eta": "operator card sr4-cnn"}``)."""

    settings: SamplerSettings
    sources: dict[str, str]
    seed: int = DEFAULT_SEED
    method: str = "silo"
    method_options: dict[str, float] = field(default_factory=dict)

    def at_size(self, height: int, width: int) -> Resolved:
        """The settings as used on ``height x width`` images: a card's eta scaled from the side it was tuned at."""
        s = self.settings
        if s.eta_reference_size is None:
            return self
        eta = s.guidance_eta(height, width)
        source = (
            f"{self.sources['eta']} ({s.eta:g} tuned at {s.eta_reference_size} px, "
            f"x {math.sqrt(height * width) / s.eta_reference_size:g} at {width}x{height})"
        )
        return replace(
            self, settings=replace(s, eta=eta, eta_reference_size=None), sources={**self.sources, "eta": source}
        )

    def values(self) -> dict[str, Any]:
        """Every value that changes the pixels, for logs and result identity (no prompt embeddings)."""
        values = self.settings.to_dict()
        if self.method == "naive":  # the naive estimate samples nothing
            values = {"steps": 0, "eta": None, **{k: v for k, v in values.items() if k not in ("steps", "eta")}}
        return {**values, "seed": self.seed, "method_options": dict(sorted(self.method_options.items()))}

    def to_log(self) -> dict[str, Any]:
        return {"values": self.values(), "sources": dict(self.sources)}


def _pick(name: str, candidates: list[tuple[str, Any]]) -> tuple[Any, str]:
    for source, value in candidates:
        if value is not None:
            return value, source
    raise AssertionError(f"no default for {name}")  # every row ends with a default


def resolve(
    task: Any,
    request: Mapping[str, Any] | None = None,
    *,
    method: str = "silo",
    preset: Any = None,
    prior_card: PriorCard | None = None,
    operator_card: OperatorCard | None = None,
) -> Resolved:
    """The settings of one run, and the source of each value (see the module's table).

    ``request`` holds what the user set: any of :data:`SETTING_NAMES`, ``seed`` and ``method_options``
    (a dict); a value of None means "not set". ``task`` is a :class:`silo.degradations.tasks.Task`.
    """
    request = {k: v for k, v in dict(request or {}).items() if v is not None}
    check_request(request)
    unknown = set(request) - set(SETTING_NAMES) - {"seed", "method_options"}
    if unknown:
        raise SiloError(f"unknown setting(s) {', '.join(sorted(unknown))} (known: {', '.join(SETTING_NAMES)}, seed)")
    prior_card = prior_card or PriorCard()
    operator_card = operator_card or OperatorCard()
    sampling = dict(getattr(task, "sampling", {}) or {})
    pre = (lambda key: getattr(preset, key, None)) if preset is not None else (lambda key: None)
    preset_name = f"preset {preset.name}" if preset is not None else "preset"
    req = "request"

    options_requested = dict(request.pop("method_options", {}) or {})
    if method == "silo" and "eta" in options_requested:  # SILO's step size is a setting: one name for it;
        request["eta"] = options_requested.pop("eta")  # a method option (a point of a sweep) beats --eta
    defaults = sampler_options(method)
    bad = set(options_requested) - set(defaults)
    if bad:
        raise SiloError(f"{method} takes {', '.join(sorted(defaults)) or 'no options'}; not {', '.join(sorted(bad))}")
    tuned = prior_card.tuned_options(method, task.name)
    bad = set(tuned) - set(defaults)
    if bad:
        raise SiloError(
            f"{prior_card.label}: {method} takes {', '.join(sorted(defaults)) or 'no options'}; "
            f"not {', '.join(sorted(bad))}"
        )
    tuned_label = f"{prior_card.label} (tuned for {task.name})"
    method_options = {k: float(options_requested.get(k, tuned.get(k, v))) for k, v in defaults.items()}

    chosen: dict[str, tuple[Any, str]] = {}
    chosen["steps"] = _pick(
        "steps",
        [
            (req, request.get("steps")),
            (preset_name, pre("steps")),
            (prior_card.label, prior_card.default_steps),
            ("default", 999),
        ],
    )
    chosen["scheduler"] = _pick(
        "scheduler",
        [
            (req, request.get("scheduler")),
            (preset_name, "ddpm" if preset is not None else None),
            (prior_card.label, prior_card.default_scheduler),
            ("default", "ddpm"),
        ],
    )
    eta_card = operator_card.recommended_eta
    chosen["eta"] = _pick(
        "eta",
        [
            (req, request.get("eta")),
            (preset_name, pre("eta")),
            (operator_card.label, eta_card),
            (f"task {task.name}", sampling.get("eta")),
            ("default", 0.5),
        ],
    )
    chosen["start_strength"] = _pick(
        "start_strength",
        [
            (req, request.get("start_strength")),
            (preset_name, 1.0 if preset is not None else None),
            (operator_card.label, operator_card.recommended_start_strength),
            (prior_card.label, prior_card.default_start_strength),
            (f"task {task.name}", sampling.get("start_strength")),
            ("default", 1.0),
        ],
    )
    chosen["clamp_measurement"] = _pick(
        "clamp_measurement",
        [
            (req, request.get("clamp_measurement")),
            (preset_name, pre("clamp")),
            (prior_card.label, prior_card.clamp_measurement),
            (f"task {task.name}", sampling.get("clamp_measurement")),
            ("default", False),
        ],
    )
    chosen["prompt"] = _pick("prompt", [(req, request.get("prompt")), (preset_name, pre("prompt")), ("default", "")])
    seed, seed_source = _pick(
        "seed", [(req, request.get("seed")), (preset_name, pre("seed")), ("default", DEFAULT_SEED)]
    )
    base = SamplerSettings()
    for name in SETTING_NAMES:
        if name not in chosen:
            chosen[name] = (request[name], req) if name in request else (getattr(base, name), "default")

    values = {k: v for k, (v, _) in chosen.items()}
    values["clamp_measurement"] = bool(values["clamp_measurement"])
    values["steps"] = int(values["steps"])
    values["start_strength"] = float(values["start_strength"])
    if values.get("grad_clamp") == 0:
        values["grad_clamp"] = None  # 0 disables the clamp
    eta_size = operator_card.recommended_eta_size if chosen["eta"][1] == operator_card.label else None
    settings = SamplerSettings(**values, eta_reference_size=eta_size)
    sources = {k: s for k, (_, s) in chosen.items()}
    sources["seed"] = seed_source
    sources.update(
        {
            f"method_options.{k}": (req if k in options_requested else tuned_label if k in tuned else "default")
            for k in method_options
        }
    )
    check(settings)
    return Resolved(settings, sources, int(seed), method, method_options)


#: the seeds a run takes: what every random generator it seeds accepts
MAX_SEED = 2**63 - 1


def check_request(request: Mapping[str, Any]) -> None:
    """One clear error for a requested setting of the wrong type, not finite, or out of range, before any
    model is loaded (the types are :class:`SamplerSettings`'s fields; ``None`` means not set)."""
    import numbers
    import typing

    hints = typing.get_type_hints(SamplerSettings)
    for name, value in request.items():
        if value is None or name == "method_options":
            continue
        flag = "--" + name.replace("_", "-")
        if name == "seed":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= MAX_SEED:
                raise SiloError(f"{flag} must be an integer in 0..{MAX_SEED} (2^63 - 1), got {value!r}")
            continue
        kind = hints.get(name)
        args = set(typing.get_args(kind)) or {kind}
        if args & {int, float} and not args & {str}:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise SiloError(f"{flag} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise SiloError(f"{flag} must be a finite number, got {value}")
            if float not in args and not float(value).is_integer():
                raise SiloError(f"{flag} must be an integer, got {value}")
        elif kind is bool and not isinstance(value, bool):
            raise SiloError(f"{flag} must be true or false, got {value!r}")
        elif kind is str and not isinstance(value, str):
            raise SiloError(f"{flag} must be text, got {value!r}")
    for name in ("eta", "grad_clamp", "ddim_eta"):
        if request.get(name) is not None and request[name] < 0:
            raise SiloError(f"--{name.replace('_', '-')} must be >= 0, got {request[name]}")
    if request.get("steps") is not None and request["steps"] < 1:
        raise SiloError(f"--steps must be >= 1, got {request['steps']}")
    strength = request.get("start_strength")
    if strength is not None and not 0.0 < strength <= 1.0:
        raise SiloError(f"--start-strength: start strength must be in (0, 1], got {strength}")


def check(settings: SamplerSettings) -> None:
    """One clear error for a setting out of range, before any work."""
    for name in ("eta", "grad_clamp", "ddim_eta", "guidance_scale", "start_strength"):
        value = getattr(settings, name)
        if value is not None and not math.isfinite(value):
            raise SiloError(f"{name.replace('_', ' ')} must be a finite number, got {value}")
    if settings.steps < 1:
        raise SiloError(f"steps must be >= 1, got {settings.steps}")
    if not 0.0 < settings.start_strength <= 1.0:
        raise SiloError(f"start strength must be in (0, 1], got {settings.start_strength}")
    if settings.eta < 0 or (settings.grad_clamp or 0) < 0 or settings.ddim_eta < 0:
        raise SiloError("eta, grad clamp and DDIM eta must be >= 0")
    if settings.cfg_fix and settings.guidance_scale == 1.0:
        raise SiloError("cfg fix only matters with a guidance scale > 1")
    if settings.tile_size < 0 or (settings.tile_overlap is not None and settings.tile_overlap < 0):
        raise SiloError("tile size and tile overlap must be >= 0 (tile size 0: never tile)")
    if settings.tile_size and settings.tile_overlap is not None and settings.tile_overlap >= settings.tile_size:
        raise SiloError(
            f"tile overlap {settings.tile_overlap} px must be smaller than the tile ({settings.tile_size} px)"
        )
    if settings.seam_feather < 0 or settings.consistency_steps < 0:
        raise SiloError("seam feather and consistency steps must be >= 0")
