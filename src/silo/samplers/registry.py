"""The sampler registry: each method is one function and one entry saying what it needs.

Front doors (the CLI's choices, ``evaluate``'s refusals, the bench's method table, the contract tests) read
the registry; none keeps a list of methods of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from silo.errors import SiloError

#: the measurement-only estimate: the degraded image brought to the image's size (bicubic up-sampling for SR,
#: the masked image for inpainting, the degraded image otherwise), no prior involved; the line to beat
NAIVE = "naive"


@dataclass(frozen=True)
class SamplerSpec:
    """A registered method: ``fn(ctx, operator=None, callback=None, **options) -> z0`` and its needs."""

    name: str
    fn: Callable[..., Tensor]
    label: str
    #: whether it is guided by a latent operator
    needs_operator: bool = False
    #: what the method can hand an operator: "z0" (a differentiable clean-latent estimate), "features"
    #: (UNet features of the step); an operator kind that reads something else is refused
    operator_inputs: frozenset[str] = frozenset()
    needs_linear: bool = False  # uses A^T
    needs_differentiable: bool = False  # back-propagates through A
    #: runs the VAE every step (decoder-guided methods): it cannot keep the VAE off the device (--offload vae)
    needs_decoder_each_step: bool = False
    #: the op a bench step is compared with: "unet_forward_backward", "unet_forward" or None
    paired_reference: str | None = "unet_forward_backward"
    options: dict[str, float] = field(default_factory=dict)

    def __call__(
        self, prior, problem, settings, operator=None, callback=None, show_progress: bool = True, **options: float
    ) -> Tensor:
        """Build the shared context and run: the call every front door makes."""
        from silo.samplers.common import deterministic_mode
        from silo.samplers.context import SamplingContext

        with deterministic_mode(settings.deterministic):
            ctx = SamplingContext.build(prior, problem, settings, show_progress)
            return self.fn(ctx, operator=operator, callback=callback, **options)


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, fn: Callable[..., Tensor], label: str = "", **needs: Any) -> SamplerSpec:
    """Add a method; its options are ``fn``'s keyword-only arguments and their defaults."""
    params = inspect.signature(fn).parameters.values()
    options = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    spec = SamplerSpec(name, fn, label or name, options=options, **needs)
    SAMPLERS[name] = spec
    return spec


def method_names() -> list[str]:
    """Every method a run may name: the registered samplers and the naive estimate."""
    return [*SAMPLERS, NAIVE]


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise SiloError(f"unknown method {name!r} (choose from {', '.join(method_names())})")
    return SAMPLERS[name]


def sampler_options(method: str) -> dict[str, float]:
    """The step sizes a method takes and their defaults (none for the naive estimate)."""
    if method == NAIVE:
        return {}
    return dict(get_sampler(method).options)


def uses_operator(method: str) -> bool:
    return method in SAMPLERS and SAMPLERS[method].needs_operator


def refusal(method: str, degradation: Any, operator: torch.nn.Module | None = None) -> str | None:
    """Why ``method`` cannot run this degradation with this operator, known before any work; else None."""
    if method == NAIVE:
        return None
    spec = get_sampler(method)
    name = getattr(degradation, "name", "this task")
    if spec.needs_linear and not degradation.linear:
        return f"{method} needs a linear degradation (it uses A^T); {name} is not linear"
    if spec.needs_differentiable and not degradation.differentiable:
        return f"{method} back-propagates through A; {name} is not differentiable"
    if spec.needs_operator:
        if operator is None:
            return f"{method} needs a latent operator"
        reads = set(getattr(operator, "reads", None) or _legacy_reads(operator))
        missing = sorted(reads & {"z0", "features"} - spec.operator_inputs)
        if missing:
            kind = getattr(operator, "kind", type(operator).__name__)
            return (
                f"{method} cannot feed a {kind} operator, which reads {', '.join(missing)}; "
                f"it gives operators {', '.join(sorted(spec.operator_inputs))}"
            )
    return None


def offload_refusal(method: str, offload: Any) -> str | None:
    """Why ``method`` cannot run with these parts offloaded (``{"vae", "text-encoder"}``); else None."""
    if method in SAMPLERS and "vae" in set(offload or ()) and SAMPLERS[method].needs_decoder_each_step:
        return (
            f"{method} runs the VAE decoder every step, so it cannot keep the VAE off the device: "
            f"drop --offload vae (SILO needs the VAE only to encode and to decode)"
        )
    return None


def _legacy_reads(operator: torch.nn.Module) -> set[str]:
    return {"features"} if getattr(operator, "needs_features", False) else {"z0"}
