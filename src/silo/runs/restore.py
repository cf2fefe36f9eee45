"""``restore``: one task and one method over many inputs, the work behind ``silo restore`` and the Python API.

:class:`RestoreConfig` is what a user asks for (the CLI's options as data); :func:`restore_inputs` resolves
the settings (:func:`silo.settings.resolve`), loads the models once and hands the requests to the runner.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silo.errors import SiloError
from silo.runs.items import Inputs, collect
from silo.runs.models import Models
from silo.runs.runner import Report, Request, RunOptions, Setup, run
from silo.settings import SETTING_NAMES, check_request, resolve


@dataclass
class RestoreConfig:
    """A restoration run: inputs, what to restore them with, and where results go."""

    inputs: Inputs = field(default_factory=Inputs)
    simulate: bool = False
    task: str | None = None  # a shipped task name or a .yaml file [default: the preset's, else sr4]
    degradation: str | None = None  # MODULE:CALLABLE instead of a task
    noise_sigma: float | None = None
    preset: str | None = None
    weights_dir: str = "trained_ckpt"
    prior: str | None = None
    operator: list[str] | str | None = None
    operator_kind: str | None = None
    allow_operator_mismatch: bool = False  # use an operator trained for another user degradation, said on stderr
    memory_limit: float | None = None  # GiB a restoration may need (None: what the device has; 0: no check)
    method: str = "silo"
    method_options: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # any of silo.settings.SETTING_NAMES and seed
    device: str = "auto"
    dtype: str = "float32"
    output_dir: str | Path | None = "outputs"
    save: str = "both"
    pad: bool = False
    batch_size: int = 1
    mask: str | None = None
    kernel: str | None = None
    show_progress: bool = True
    lpips: bool = True
    command: str = "silo restore"
    keep_outputs: bool = False
    quiet: bool = False
    offload: list[str] = field(default_factory=list)  # "vae", "text-encoder": on the CPU outside their uses


def load_run_task(task: str | None, degradation: str | None, noise_sigma: float | None, preset: Any = None):
    """The task a run restores: a shipped or YAML task, or a user degradation (``MODULE:CALLABLE``)."""
    from silo.degradations.tasks import load_task

    if noise_sigma is not None and not (math.isfinite(noise_sigma) and noise_sigma >= 0):
        raise SiloError(f"--noise-sigma must be a finite number >= 0, got {noise_sigma}")
    if degradation:
        from silo.degradations.user import user_task

        if task or preset is not None:
            raise SiloError("--degradation replaces --task (and --preset): give only one")
        return user_task(degradation, noise_sigma or 0.0)
    return load_task(task or (preset.task if preset is not None else "sr4"), noise_sigma)


def build_setup(
    models: Models, task, method: str, request: dict[str, Any], method_options: dict[str, float], preset: Any = None
) -> Setup:
    """One method on one task: its operator and its settings, resolved once for every front door."""
    from silo.samplers.registry import method_names, refusal

    if method not in method_names():
        raise SiloError(f"unknown method {method!r} (choose from {', '.join(method_names())})")
    operator = models.operator(task, method)
    why = refusal(method, task.degradation, operator)
    if why:
        raise SiloError(why)
    resolved = resolve(
        task,
        {**request, "method_options": method_options},
        method=method,
        preset=preset,
        prior_card=models.prior_card,
        operator_card=models.operator_card(task, method),
    )
    if method != "naive":  # a scheduler or step count the prior cannot take: one error before any work
        from silo.samplers.context import scheduler_class

        scheduler_class(resolved.settings.scheduler)
        train_steps = int(models.prior.scheduler.config.num_train_timesteps)
        if not 1 <= resolved.settings.steps <= train_steps:
            raise SiloError(f"steps must be in 1..{train_steps} for this prior, got {resolved.settings.steps}")
    return Setup(
        models.prior, models.prior_source, task, method, resolved, operator, preset.name if preset is not None else None
    )


def check_kernel_use(setup: Setup, allow: bool, command: str) -> None:
    """A --kernel the method's operator does not read changes nothing in the output: refused (where the task
    does not need it for its measurement model), unless --allow-operator-mismatch, which is said."""
    operator = setup.operator
    if operator is None or getattr(operator, "needs_blur_kernel", False) or setup.task.degradation.needs_kernel:
        return
    why = (
        f"--kernel: the operator {getattr(operator, 'source', '')} does not read a blur kernel, so the kernel "
        f"would change nothing in the output of {setup.method}"
    )
    if not allow:
        raise SiloError(f"{why}; pass a kernel-aware operator, leave out --kernel, or pass --allow-operator-mismatch")
    print(f"{command}: note: --allow-operator-mismatch: {why}", file=sys.stderr)


def settings_request(settings: dict[str, Any]) -> dict[str, Any]:
    unknown = set(settings) - set(SETTING_NAMES) - {"seed"}
    if unknown:
        raise SiloError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    request = {k: v for k, v in settings.items() if v is not None}
    check_request(request)  # types, NaN, ranges and the seed: before any model is loaded
    return request


def check_output_dir(path: str | Path | None) -> Path | None:
    """The output folder, checked before any model is loaded and without creating it: a path under a regular
    file, a read-only file system or a folder the user cannot write is one line here. The runner makes it
    and writes a test file (a full disk) before sampling."""
    if path is None:
        return None
    from silo.runs.runner import check_writable

    return check_writable(Path(path), "--output-dir")


def restore_inputs(
    config: RestoreConfig,
    items: list | None = None,
    models: Models | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Report:
    """Restore every input of ``config`` (or the given items) with one task and method. ``models``: models
    already loaded (the Python pipeline keeps its own between calls), else loaded as ``config`` says;
    ``callback``: called at every sampling step (the pipeline's progress bar)."""
    from silo.presets import get_preset
    from silo.provenance import resolve_device, resolve_dtype

    preset = get_preset(config.preset) if config.preset else None
    if config.batch_size < 1:
        raise SiloError("--batch-size must be >= 1")
    task = load_run_task(config.task, config.degradation, config.noise_sigma, preset)
    simulate = config.simulate or bool(config.inputs.examples) or bool(config.inputs.photos)
    if simulate and (config.mask or config.kernel):
        raise SiloError("--mask and --kernel describe a real measurement; with --simulate the task draws its own")
    request = settings_request(config.settings)
    if not simulate:
        from silo.runs.runner import check_measurement_options

        check_measurement_options(task, config.mask, config.kernel)  # the whole run's, said once with exit 2
    if config.memory_limit is not None and not (math.isfinite(config.memory_limit) and config.memory_limit >= 0):
        raise SiloError(f"--memory-limit must be a number of GiB >= 0, got {config.memory_limit}")
    items = collect(config.inputs) if items is None else items
    if config.inputs.param_draws > 1 and not (simulate and task.degradation.random_params):
        items = [i for i in items if not i.param_draw]  # another draw would repeat the same result
    out_dir = check_output_dir(config.output_dir)
    device = resolve_device(config.device)
    from silo.samplers.registry import offload_refusal, uses_operator

    why = offload_refusal(config.method, config.offload)  # said before any model is loaded
    if why:
        raise SiloError(why)
    if preset is not None and not config.operator and uses_operator(config.method):
        preset.operator_path(config.weights_dir)  # a missing published file, said before loading the prior
    if models is None:
        models = Models.load(
            config.prior,
            device,
            resolve_dtype(config.dtype),
            config.operator,
            config.operator_kind,
            preset,
            config.weights_dir,
            config.allow_operator_mismatch,
        )
    setup = build_setup(models, task, config.method, request, config.method_options, preset)
    if config.kernel:
        check_kernel_use(setup, config.allow_operator_mismatch, config.command)
    models.prior.set_offload(config.offload)
    settings = setup.resolved.settings
    if not models.prior.is_conditional and (settings.prompt or settings.guidance_scale != 1.0):
        print(
            f"{config.command}: note: the prior is unconditional; --prompt and --guidance-scale have no effect",
            file=sys.stderr,
        )
    options = RunOptions(
        out_dir,
        simulate=simulate,
        save=config.save,
        pad=config.pad,
        batch_size=config.batch_size,
        max_pixels=config.inputs.max_pixels,
        mask=config.mask,
        kernel=config.kernel,
        lpips=config.lpips,
        show_progress=config.show_progress,
        command=config.command,
        dtype=config.dtype,
        keep_outputs=config.keep_outputs,
        quiet=config.quiet,
        callback=callback,
        memory_limit=None if config.memory_limit is None else config.memory_limit * 1024**3,
    )
    return run([Request(item, setup, setup.resolved.seed) for item in items], options)
