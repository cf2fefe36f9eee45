"""Method options: each sampler's keyword-only step sizes, set or swept from the command line.

``--method-option [METHOD.]NAME=V[,V...]``: without a prefix an option applies to every chosen method that
takes it; several values sweep it (cartesian product per method). SILO's ``eta`` lives in
``SamplerSettings``; every other method's step size is a keyword-only argument of its sampler.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from silo.errors import SiloError


@dataclass(frozen=True)
class MethodConfig:
    """A method with the options given explicitly on the command line (one point of a sweep)."""

    method: str
    options: tuple[tuple[str, float], ...] = ()

    @property
    def option_dict(self) -> dict[str, float]:
        return dict(self.options)


def method_options(method: str) -> dict[str, Any]:
    """The options a method takes and their defaults: its keyword-only arguments (SILO: ``eta``)."""
    from silo.samplers.registry import SAMPLERS, sampler_options

    if method not in SAMPLERS:
        return {}  # the naive estimate takes no options
    options: dict[str, Any] = sampler_options(method)
    if method == "silo":
        options["eta"] = None  # SamplerSettings.eta: --eta, else the operator card's, else the task's
    return options


def parse_method_options(specs: list[str], methods: list[str]) -> list[MethodConfig]:
    """``[METHOD.]NAME=V[,V...]`` specs -> one config per method and point of the sweep (cartesian product)."""
    chosen: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    for spec in specs:
        name, sep, values = spec.partition("=")
        target, _, opt = name.strip().rpartition(".")
        if not sep or not opt:
            raise SiloError(f"--method-option {spec!r}: expected [METHOD.]NAME=VALUE[,VALUE...], e.g. ldps.zeta=0.5,1")
        if target and target not in methods:
            raise SiloError(
                f"--method-option {spec!r}: method {target!r} is not among --methods ({', '.join(methods)})"
            )
        targets = [target] if target else [m for m in methods if opt in method_options(m)]
        if not targets:
            raise SiloError(f"--method-option {spec!r}: no selected method takes {opt!r}")
        for m in targets:
            if opt not in method_options(m):
                raise SiloError(f"--method-option {spec!r}: {m} takes {', '.join(method_options(m)) or 'no options'}")
            try:
                vals = [float(v) for v in values.split(",") if v.strip()]
            except ValueError:
                raise SiloError(f"--method-option {spec!r}: values must be numbers") from None
            if not vals:
                raise SiloError(f"--method-option {spec!r}: no value")
            chosen[m][opt] = vals
    configs = []
    for m in methods:
        keys = sorted(chosen[m])
        for combo in itertools.product(*(chosen[m][k] for k in keys)):
            configs.append(MethodConfig(m, tuple(zip(keys, combo))))
    return configs
