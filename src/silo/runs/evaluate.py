"""``evaluate``: images x tasks x methods x seeds, simulated and measured, on one process or many.

Requests are listed in one deterministic order on every process; process ``r`` of ``w`` (``accelerate
launch`` or ``torchrun``) takes ``requests[r::w]`` and the runner skips those whose log exists, so a run
resumes and ranks never collide. After a barrier the main process aggregates every log in the folder (the
same function as ``silo summarize``), so the table does not depend on how the work was split.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silo.errors import SiloError
from silo.runs.items import Inputs, collect
from silo.runs.models import Models
from silo.runs.restore import build_setup, check_output_dir, settings_request
from silo.runs.runner import Report, Request, RunOptions, run


@dataclass
class EvaluateConfig:
    inputs: Inputs = field(default_factory=Inputs)
    tasks: list[str] = field(default_factory=lambda: ["sr4"])
    degradations: list[str] = field(default_factory=list)  # MODULE:CALLABLE user degradations, after the tasks
    methods: list[str] = field(default_factory=lambda: ["silo", "silo_x0", "ldps", "psld"])
    method_options: list[str] = field(default_factory=list)  # [METHOD.]NAME=V[,V...] specs
    seeds: list[int] = field(default_factory=lambda: [1000])
    sweep_steps: list[int] = field(default_factory=list)  # each method at each of these step counts (a frontier)
    noise_sigma: float | None = None
    prior: str | None = None
    operator: list[str] = field(default_factory=list)
    operator_kind: str | None = None
    allow_operator_mismatch: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "float32"
    output_dir: str | Path = "evaluation"
    save: str = "image"
    pad: bool = False
    batch_size: int = 1
    lpips: bool = True
    fid: bool = True
    inception_weights: str | None = None
    aggregate: bool = True
    plots: bool = True
    show_progress: bool = True
    timeout_minutes: float = 24 * 60
    memory_limit: float | None = None  # GiB a restoration may need (None: what the device has; 0: no check)


def init_processes(device_arg: str, timeout_minutes: float):
    """``(state, device)``: accelerate's process state (one process, or a torchrun/accelerate group)."""
    from datetime import timedelta

    from accelerate import PartialState

    from silo.provenance import resolve_device

    requested = resolve_device(device_arg)
    state = PartialState(cpu=requested.type == "cpu", timeout=timedelta(minutes=timeout_minutes))
    device = requested
    if state.num_processes > 1 and requested.type == "cuda" and device_arg in ("auto", "cuda"):
        device = state.device  # one GPU per process: cuda:LOCAL_RANK
    return state, device


def plan_requests(items: list, setups: list, seeds: list[int]) -> list[Request]:
    """Every request in one order shared by all processes."""
    requests = []
    for setup in setups:
        random = setup.task.degradation.random_params
        for seed in seeds:
            for item in items:
                if item.param_draw and not random:
                    continue  # another draw of a fixed degradation would repeat the same result
                requests.append(Request(item, setup, seed))
    return requests


def evaluate(config: EvaluateConfig) -> Report:
    from silo.degradations.tasks import load_task
    from silo.evaluation.options import parse_method_options
    from silo.provenance import resolve_dtype
    from silo.samplers.registry import method_names, refusal

    if config.batch_size < 1:
        raise SiloError("--batch-size must be >= 1")
    unknown = [m for m in config.methods if m not in method_names()]
    if unknown or not config.methods:
        raise SiloError(f"unknown method(s) {unknown} (choose from {', '.join(method_names())})")
    configs = parse_method_options(config.method_options, config.methods)
    tasks = [load_task(t, config.noise_sigma) for t in config.tasks]
    if config.degradations:
        from silo.runs.restore import load_run_task

        tasks += [load_run_task(None, spec, config.noise_sigma) for spec in config.degradations]
    if not tasks or not config.seeds:
        raise SiloError("give at least one --tasks and one --seeds value")
    items = collect(config.inputs)
    out_dir = check_output_dir(config.output_dir)
    step_requests = [settings_request({**config.settings, "steps": n}) for n in config.sweep_steps] or [
        settings_request(config.settings)
    ]

    state, device = init_processes(config.device, config.timeout_minutes)
    rank, world, main = state.process_index, state.num_processes, state.is_main_process
    models = Models.load(
        config.prior,
        device,
        resolve_dtype(config.dtype),
        config.operator,
        config.operator_kind,
        allow_operator_mismatch=config.allow_operator_mismatch,
    )
    setups, refused = [], []
    for task in tasks:
        for method_config in configs:
            why = refusal(method_config.method, task.degradation, models.operator(task, method_config.method))
            if why:
                refused.append(f"{method_config.method} x {task.name}: {why}")
                continue
            for request in step_requests:
                setups.append(build_setup(models, task, method_config.method, request, method_config.option_dict))
    if main:
        for why in dict.fromkeys(refused):  # one line per method and task, however many option points
            print(f"silo evaluate: skipped {why}", file=sys.stderr)
    requests = plan_requests(items, setups, config.seeds)
    mine = requests[rank::world]
    tag = f"[rank {rank}/{world}] " if world > 1 else ""
    print(f"silo evaluate: {tag}{len(requests)} results planned, {len(mine)} here", file=sys.stderr)
    options = RunOptions(
        out_dir / "runs",
        simulate=True,
        save=config.save,
        pad=config.pad,
        batch_size=config.batch_size,
        max_pixels=config.inputs.max_pixels,
        lpips=config.lpips,
        measure_memory=True,
        references=out_dir / "references",
        show_progress=config.show_progress and world == 1,
        command="silo evaluate",
        dtype=config.dtype,
        log_extra={"evaluation": {"rank": rank, "world_size": world}},
        quiet=True,
        memory_limit=None if config.memory_limit is None else config.memory_limit * 1024**3,
    )
    report = run(mine, options)
    print(
        f"silo evaluate: {tag}finished {report.done}, already done {report.skipped}, failed {len(report.failures)}",
        file=sys.stderr,
    )
    state.wait_for_everyone()
    if main and config.aggregate:
        summarize_to(out_dir, out_dir, config.fid, config.inception_weights, config.plots)
    return report


def summarize_to(folder: Path, out_dir: Path, with_fid: bool, inception_weights: str | None, with_plots: bool) -> dict:
    """Aggregate ``folder`` into ``out_dir`` (tables, then plots), print the Markdown table and how it grouped."""
    from silo.evaluation.aggregate import aggregate_folder, markdown, write_tables
    from silo.evaluation.frontier import frontier, has_sweep, plot_frontier, write_frontier
    from silo.evaluation.plots import matplotlib_missing, plot_tables
    from silo.runs.runner import say, write_error

    table = aggregate_folder(folder, with_fid, inception_weights)
    try:
        paths = write_tables(table, out_dir)
    except OSError as err:  # a read-only or full folder: one line
        raise SiloError(write_error(err)) from None
    say(markdown(table))
    skipped = table.get("skipped") or []
    for s in skipped:
        say(f"silo: skipped {Path(folder) / s['path']}: {s['reason']}", err=True)
    print(
        f"grouped {table['logs']} results into {len(table['rows'])} rows by {', '.join(table['group_by'])}"
        + (f"; skipped {len(skipped)} log(s) that could not be read (above)" if skipped else ""),
        file=sys.stderr,
    )
    front = frontier(table) if has_sweep(table) else None
    if front is not None:
        paths += write_frontier(front, out_dir)
    if with_plots:
        missing = matplotlib_missing()
        if missing:
            print(f"silo: {missing}", file=sys.stderr)
        else:
            paths += plot_tables(table, Path(out_dir) / "plots")
            if front is not None:
                paths += plot_frontier(front, Path(out_dir) / "plots")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return table
