"""The thin restoration pipeline: measurement -> sampler -> decode, for a batch, in either mode.

``reference`` given (simulation): ``y = A(x) + n`` is made here and metrics can compare with ``x``.
``measurement`` given: ``y`` is the user's degraded image (a low-resolution photo, a JPEG, ...).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from silo.degradations.base import Params
from silo.degradations.tasks import Task
from silo.errors import SiloError
from silo.priors.prior import Prior
from silo.samplers import Problem, SamplerSettings
from silo.samplers.common import Callback, check_finite
from silo.samplers.registry import NAIVE, get_sampler, method_names, offload_refusal, refusal

__all__ = ["NAIVE", "Restoration", "method_names", "padded_size", "restore"]


@dataclass
class Restoration:
    output: Tensor  # B x 3 x H x W in [-1, 1]
    measurement: Tensor  # y = A(x) + n, at the measurement's size
    a_output: Tensor  # A(output), noise-free
    reference: Tensor | None  # x (simulation only)
    a_reference: Tensor | None  # A(x), noise-free (simulation only)
    params: Params
    seconds: float
    steps: int  # sampling steps run (0 for the naive estimate)
    tiling: dict | None = None  # the tiles the image was restored in (None: one piece)


def padded_size(prior: Prior, task: Task, height: int, width: int) -> tuple[int, int]:
    """The smallest image size >= ``height x width`` that the prior (and an SR factor) can take."""
    multiple = math.lcm(prior.size_multiple, int(task.degradation.scale))
    return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple


def _pad(x: Tensor, size: tuple[int, int], mode: str = "reflect", value: float = 0.0) -> Tensor:
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    if mode == "reflect" and (dh >= x.shape[-2] or dw >= x.shape[-1]):
        mode = "replicate"  # reflection cannot pad more than the side itself
    if mode == "constant":
        return F.pad(x, (0, dw, 0, dh), mode="constant", value=value)
    return F.pad(x, (0, dw, 0, dh), mode=mode)


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
    pad: bool = False,
    method_options: dict[str, float] | None = None,
) -> Restoration:
    """Restore a batch; exactly one of ``reference`` / ``measurement`` is given.

    With ``pad``, an image size the prior cannot take is handled by padding the *measurement* (reflection;
    inpainting masks mark the padding as known), sampling at the padded size and cropping the result back;
    the degradation itself always runs at the true size, so masks, metrics and ``A(output)`` are unaffected.
    ``method_options`` are the sampler's keyword-only step sizes (e.g. ``{"zeta": 0.5}`` for ``ldps``).
    ``seeds`` are the images' own seeds (the runner derives them from the run's seed and each image).
    """
    if (reference is None) == (measurement is None):
        raise ValueError("give exactly one of reference= (simulation) or measurement=")
    if method not in method_names():
        raise SiloError(f"unknown method {method!r} (choose from {', '.join(method_names())})")
    why = refusal(method, task.degradation, operator) or offload_refusal(method, prior.offload)
    if why:
        raise SiloError(why)
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
            y = deg.measure(reference, params, seeds)
    else:
        params = {k: v.to(device) for k, v in (params or {}).items()}
        y = measurement.to(device, torch.float32)
        mask = deg.mask(params)
        if mask is not None:  # the hole holds whatever the file has; the operator was trained on zeros there
            y = y * mask.to(y)
        a_reference = None
    if method == NAIVE:
        with torch.no_grad():
            output = deg.to_image_size(y).float().clamp(-1, 1)
            mask = deg.mask(params)
            if mask is not None:  # the masked image: measurement noise in the hole is not an estimate of it
                output = output * mask.to(output)
            a_output = deg.A(output, params)
        return Restoration(output, y, a_output, reference, a_reference, params, time.perf_counter() - start, 0)
    height, width = deg.image_shape(*y.shape[-2:])
    size = (height, width)
    if pad:
        size = padded_size(prior, task, height, width)
    prior.check_image_size(*size)
    y_run, params_run = y, params
    if size != (height, width):
        y_run = _pad(y, deg.measurement_shape(*size))
        params_run = {k: (_pad(v, size, "constant", 1.0) if k == "mask" else v) for k, v in params.items()}
    problem = Problem(deg, y_run, params_run, list(seeds), size)
    from silo.priors.tiled import tiled

    run_prior = tiled(prior, size, settings.tile_size, settings.tile_overlap)  # prior itself: one piece
    z0 = get_sampler(method)(
        run_prior,
        problem,
        settings,
        operator=operator,
        callback=callback,
        show_progress=show_progress,
        **(method_options or {}),
    )
    with torch.no_grad():
        output = run_prior.decode(z0).float().clamp(-1, 1)[..., :height, :width]
        check_finite(output, settings.steps, "the decoded image")
    output = _owe_measurement(output, y, deg, params, settings)
    with torch.no_grad():
        a_output = deg.A(output, params)
    seconds = time.perf_counter() - start
    tiling = run_prior.describe_tiling() if run_prior is not prior else None
    return Restoration(output, y, a_output, reference, a_reference, params, seconds, settings.steps_run, tiling)


def _owe_measurement(output: Tensor, y: Tensor, deg, params: Params, settings: SamplerSettings) -> Tensor:
    """The decoded output made consistent with the measurement as the settings ask (silo.consistency):
    ``consistency_steps`` steps on ``||A(x) - y||``, then inpainting's known pixels put back."""
    from silo.consistency import data_consistency, keep_known_pixels

    if settings.consistency_steps:
        output = data_consistency(output, y, deg, params, settings.consistency_steps)
    mask = deg.mask(params)
    if settings.keep_known and mask is not None:
        with torch.no_grad():
            output = keep_known_pixels(output, y, mask, settings.seam_feather)
    return output
