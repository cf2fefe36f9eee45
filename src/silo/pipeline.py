"""The thin restoration pipeline: measurement -> sampler -> decode, for a batch, in either mode.

``reference`` given (simulation): ``y = A(x) + n`` is made here and metrics can compare with ``x``.
``measurement`` given: ``y`` is the user's degraded image (a low-resolution photo, a JPEG, ...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from silo.degradations.base import Params
from silo.degradations.tasks import Task
from silo.errors import SiloError
from silo.priors.prior import Prior
from silo.samplers import SAMPLERS, Problem, SamplerSettings
from silo.samplers.common import Callback, check_finite


@dataclass
class Restoration:
    output: Tensor  # B x 3 x H x W in [-1, 1]
    measurement: Tensor  # y = A(x) + n, at the measurement's size
    a_output: Tensor  # A(output), noise-free
    reference: Tensor | None  # x (simulation only)
    a_reference: Tensor | None  # A(x), noise-free (simulation only)
    params: Params
    seconds: float
    steps: int


def restore(
    prior: Prior,
    task: Task,
    settings: SamplerSettings,
    seeds: list[int],
    *,
    reference: Tensor | None = None,
    measurement: Tensor | None = None,
    params: Params | None = None,
    param_seeds: list[int] | None = None,
    method: str = "silo",
    operator: torch.nn.Module | None = None,
    callback: Callback | None = None,
    show_progress: bool = True,
) -> Restoration:
    """Restore a batch; exactly one of ``reference`` / ``measurement`` is given."""
    if (reference is None) == (measurement is None):
        raise ValueError("give exactly one of reference= (simulation) or measurement=")
    if method not in SAMPLERS:
        raise SiloError(f"unknown method {method!r} (choose from {', '.join(SAMPLERS)})")
    deg = task.degradation
    device = prior.device
    start = time.perf_counter()
    if reference is not None:
        reference = reference.to(device, torch.float32)
        deg.check_size(*reference.shape[-2:])
        if params is None:
            params = deg.sample_params(reference.shape, param_seeds or seeds)
        params = {k: v.to(device) for k, v in params.items()}
        with torch.no_grad():
            a_reference = deg.A(reference, params)
            y = deg.add_noise(a_reference, seeds)
    else:
        y = measurement.to(device, torch.float32)
        params = {k: v.to(device) for k, v in (params or {}).items()}
        a_reference = None
    image_size = deg.image_shape(*y.shape[-2:])
    prior.check_image_size(*image_size)
    problem = Problem(deg, y, params, list(seeds), image_size)
    z0 = SAMPLERS[method](prior, problem, settings, operator=operator, callback=callback, show_progress=show_progress)
    with torch.no_grad():
        output = prior.decode(z0).float().clamp(-1, 1)
        check_finite(output, settings.steps, "the decoded image")
        a_output = deg.A(output, params)
    seconds = time.perf_counter() - start
    return Restoration(output, y, a_output, reference, a_reference, params, seconds, settings.steps)
