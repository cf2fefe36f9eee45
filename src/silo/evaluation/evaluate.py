"""The work behind ``silo evaluate``: images x tasks x methods x seeds, simulated, one log per result.

Jobs are listed in one deterministic order on every process; process ``r`` of ``w`` (``accelerate launch``
or ``torchrun``) takes ``jobs[r::w]`` and skips those whose log exists, so a run resumes and ranks never
collide. After a barrier the main process aggregates every log in the folder (the same function as
``silo summarize``), so the table does not depend on how the work was split.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from silo.errors import SiloError
from silo.evaluation.options import MethodConfig, method_options, parse_method_options
from silo.evaluation.records import OPERATOR_METHODS, method_label, method_slug
from silo.evaluation.sources import collect_items, load_task_operator, operator_source

@dataclass
class EvalJob:
    task: Any
    config: MethodConfig
    seed: int
    item: Any
    kind: str | None  # operator kind, for labels

    @property
    def stem(self) -> str:
        return f"{self.item.name}_{self.task.name}_{method_slug(self.config.method, self.kind, self.config.option_dict)}_s{self.seed}"

    @property
    def label(self) -> str:
        return method_label(self.config.method, self.kind, self.config.option_dict)


def refusal(method: str, task, operator) -> str | None:
    """Why a method cannot run a task (known before running), or None."""
    if method == "psld" and not task.degradation.linear:
        return f"psld x {task.name}: PSLD needs a linear degradation"
    if method == "silo_x0" and getattr(operator, "needs_features", False):
        return f"silo_x0 x {task.name}: x0-space SILO needs an operator on z0 (cnn or preserve), not a readout"
    return None


# ------------------------------------------------------------------------------------ processes
def init_processes(device_arg: str, timeout_minutes: float):
    """``(state, device)``: accelerate's process state (one process, or a torchrun/accelerate group)."""
    from datetime import timedelta

    from accelerate import PartialState

    from silo.cli._restore_impl import resolve_device

    requested = resolve_device(device_arg)
    state = PartialState(cpu=requested.type == "cpu", timeout=timedelta(minutes=timeout_minutes))
    device = requested
    if state.num_processes > 1 and requested.type == "cuda" and device_arg in ("auto", "cuda"):
        device = state.device  # one GPU per process: cuda:LOCAL_RANK
    return state, device


# ------------------------------------------------------------------------------------ running
def _write_reference(path: Path, image: torch.Tensor) -> None:
    """The clean reference, once per image (FID/KID read it); another rank may have written it already."""
    from silo.io.images import tensor_to_pil
    from silo.io.outputs import png_bytes, write_new

    if path.exists():
        return
    try:
        write_new(path, png_bytes(tensor_to_pil(image)))
    except SiloError:
        pass  # written meanwhile by another process: same bytes


def run_batch(jobs: list[EvalJob], prepared: list, ctx: dict[str, Any]) -> list[Path]:
    """Restore one batch (same task, method, seed, size), write each image's outputs and log; returns logs."""
    from silo.cli._restore_impl import _clean
    from silo.evaluation.memory import PeakMemory, max_rss, release_memory
    from silo.evaluation.metrics import restoration_metrics
    from silo.io.grid import make_grid
    from silo.io.images import tensor_to_pil
    from silo.io.outputs import json_bytes, png_bytes, write_group
    from silo.pipeline import NAIVE, logged_settings, restore

    first = jobs[0]
    task, config, seed, device = first.task, first.config, first.seed, ctx["device"]
    options = config.option_dict
    settings = ctx["settings"][task.name]
    if "eta" in options and config.method == "silo":  # a given eta is used as given, like --eta
        settings = replace(settings, eta=options.pop("eta"), eta_reference_size=None)
    operator = ctx["operators"].get(task.name) if config.method in OPERATOR_METHODS else None
    tensors = torch.cat([p.tensor for p in prepared])
    params = {k: torch.cat([p.params[k] for p in prepared]) for k in prepared[0].params}
    release_memory(device)
    with PeakMemory(device) as mem:
        res = restore(ctx["prior"], task, settings, [seed] * len(jobs), reference=tensors, params=params,
                      method=config.method, operator=operator, show_progress=ctx["show"], pad=ctx["pad"],
                      method_options=options)
    effective = {k: v for k, v in method_options(config.method).items() if k != "eta"}
    effective.update(options)
    if config.method == "silo":
        effective["eta"] = settings.eta
    logs = []
    for i, (job, prep) in enumerate(zip(jobs, prepared)):
        h, w = prep.crop
        out = res.output[i : i + 1, :, :h, :w].cpu()
        ref = res.reference[i : i + 1, :, :h, :w].cpu()
        a_out, a_ref = res.a_output[i : i + 1].cpu(), res.a_reference[i : i + 1].cpu()
        metrics = restoration_metrics(out, ref, a_out, a_ref, with_lpips=ctx["lpips"])[0]
        metrics["seconds"] = res.seconds / len(jobs)
        # per image, as restore logs it; none for the naive estimate, which samples nothing
        metrics["seconds_per_step"] = res.seconds / len(jobs) / res.steps if res.steps else None
        metrics["peak_memory_bytes"] = mem.peak
        ref_path = ctx["references"] / f"{job.item.name}.png"
        if ctx["save"] != "none":
            _write_reference(ref_path, ref)
        log = {
            **ctx["base_log"],
            "task": task.to_dict(),
            "method": config.method,
            "method_label": job.label,
            "method_options": effective,
            "operator": ctx["operator_logs"].get(task.name) if operator is not None else None,
            "settings": logged_settings(config.method, settings),
            "seed": seed,
            "input": job.item.source,
            "name": job.item.name,
            "image_size": [h, w],
            "batch_size": len(jobs),
            "metrics": metrics,
            "memory": {**mem.result(), "process_max_rss_bytes": max_rss()},
            "sampling_seconds": res.seconds,
            "outputs": {k: p.name for k, p in prep.paths.items() if k == "log" or ctx["save"] in (k, "both")},
            "reference_image": f"../references/{ref_path.name}" if ctx["save"] != "none" else None,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        files: dict[Path, bytes] = {}
        if ctx["save"] in ("image", "both"):
            files[prep.paths["image"]] = png_bytes(tensor_to_pil(out))
        if ctx["save"] in ("grid", "both"):
            panels = [("x", ref), ("A(x)+n", res.measurement[i : i + 1].cpu()), ("output", out), ("A(output)", a_out)]
            run = "no sampling" if config.method == NAIVE else f"{settings.steps} steps"
            lines = [f"{task.name} | {job.label} | {run} | seed {seed}",
                     f"psnr {metrics['psnr']:.2f} | ssim {metrics['ssim']:.3f}"]
            files[prep.paths["grid"]] = png_bytes(make_grid(panels, lines))
        files[prep.paths["log"]] = json_bytes(_clean(log))  # the log last: its presence marks the result done
        write_group(files)
        logs.append(prep.paths["log"])
    return logs


def plan_jobs(items: list, tasks: list, configs: list[MethodConfig], seeds: list[int],
              operators: dict[str, Any]) -> tuple[list[EvalJob], list[str]]:
    """Every job in one order shared by all processes, and the combinations refused up front."""
    jobs, refused = [], []
    for task in tasks:
        operator = operators.get(task.name)
        kind = getattr(operator, "kind", None) if operator is not None else None
        for config in configs:
            why = refusal(config.method, task, operator)
            if why:
                refused.append(why)
                continue
            random = has_random_params(task.degradation)
            for seed in seeds:
                for item in items:
                    if item.param_draw and not random:
                        continue  # another draw of a fixed degradation would repeat the same result
                    jobs.append(EvalJob(task, config, seed, item, kind if config.method in OPERATOR_METHODS else None))
    return jobs, refused


def has_random_params(degradation) -> bool:
    """Whether two parameter seeds give different parameters (a motion kernel, a mask), i.e. whether
    ``--param-draws`` measures anything new for this degradation."""
    import torch

    shape = (1, 3, 64, 64)
    a, b = degradation.sample_params(shape, [1]), degradation.sample_params(shape, [2])

    def differs(u, v) -> bool:
        return not torch.equal(u, v) if torch.is_tensor(u) and torch.is_tensor(v) else u != v

    return any(k not in b or differs(a[k], b[k]) for k in a)


def fits(batch: list[EvalJob], prepared: list, job: EvalJob, prep: Any, size: int) -> bool:
    """Whether ``job`` can join ``batch``: same task, method and seed, equal tensor size and parameters."""
    first, p0 = batch[0], prepared[0]
    same = (first.task.name, first.config, first.seed) == (job.task.name, job.config, job.seed)
    return same and len(batch) < size and p0.tensor.shape == prep.tensor.shape and p0.params.keys() == prep.params.keys()


def card_source(args: argparse.Namespace, task_name: str, operator_logs: dict[str, dict]) -> str | None:
    """The operator folder whose card sets a task's step size and warm start for *every* method of the run.

    The loaded operator's when a method needs one; otherwise the one that would be loaded (given with
    --operator, or the shipped one with the shipped prior), so that a baseline starts where it would beside
    SILO: a run of baselines alone used to start them from noise."""
    if task_name in operator_logs:
        return operator_logs[task_name]["source"]
    if args.prior and not args.operator:  # another prior: the shipped operators' cards do not apply to it
        return None
    try:
        source = operator_source(task_name, args.operator, args.operator_kind)
    except SiloError:  # no shipped operator for this task: the task's own defaults apply
        return None
    return str(source) if (source / "model_card.json").is_file() else None


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def evaluate_command(args: argparse.Namespace) -> int:
    from silo.cli._restore_impl import _load_item, _prepare, _remove_leftovers, _settings, device_name, library_versions
    from silo.degradations.tasks import load_task
    from silo.models import default_prior_path
    from silo.priors.prior import Prior
    from silo.pipeline import method_names
    from silo.samplers.common import progress

    if args.batch_size < 1:
        raise SiloError("--batch-size must be >= 1")
    methods = _split(args.methods)
    unknown = [m for m in methods if m not in method_names()]
    if unknown or not methods:
        raise SiloError(f"unknown method(s) {unknown} (choose from {', '.join(method_names())})")
    configs = parse_method_options(args.method_option, methods)
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        raise SiloError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    tasks = [load_task(t, args.noise_sigma) for t in _split(args.tasks)]
    if not tasks or not seeds:
        raise SiloError("give at least one --tasks and one --seeds value")
    items = collect_items(args)
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SiloError(f"--output-dir {out_dir} exists and is not a folder")
    runs, references = out_dir / "runs", out_dir / "references"

    state, device = init_processes(args.device, args.timeout_minutes)
    rank, world, main = state.process_index, state.num_processes, state.is_main_process
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    prior_source = args.prior or default_prior_path()
    prior = Prior.from_pretrained(prior_source, device=device, dtype=dtype)
    operators, operator_logs = {}, {}
    if any(c.method in OPERATOR_METHODS for c in configs):
        for task in tasks:
            source = operator_source(task.name, args.operator, args.operator_kind)
            op = load_task_operator(source, args.operator_kind, prior, task, device)
            operators[task.name] = op
            operator_logs[task.name] = {
                "source": str(source), "kind": getattr(op, "kind", type(op).__name__),
                "config": {k: v for k, v in dict(op.config).items() if not k.startswith("_")}}
    settings = {task.name: _settings(args, task, None, prior_source, card_source(args, task.name, operator_logs))
                for task in tasks}

    jobs, refused = plan_jobs(items, tasks, configs, seeds, operators)
    if main:
        for why in refused:
            print(f"silo evaluate: skipped {why}", file=sys.stderr)
    mine = jobs[rank::world]
    todo = [j for j in mine if not (runs / f"{j.stem}.json").exists()]
    tag = f"[rank {rank}/{world}] " if world > 1 else ""
    print(f"silo evaluate: {tag}{len(jobs)} results planned, {len(mine)} here, {len(mine) - len(todo)} already done",
          file=sys.stderr)
    ctx = {
        "device": device, "prior": prior, "operators": operators, "operator_logs": operator_logs,
        "settings": settings, "show": not args.no_progress and world == 1, "save": args.save,
        "lpips": not args.no_lpips, "references": references, "pad": args.pad,
        "base_log": {
            "command": " ".join(sys.argv), "mode": "simulate",
            "prior": {"source": str(prior_source), **prior.describe()},
            "device": device_name(device), "versions": library_versions(),
            "evaluation": {"rank": rank, "world_size": world},
        },
    }
    failures: list[str] = []
    done = 0
    batch: list[EvalJob] = []
    prepared: list = []

    def flush() -> None:
        nonlocal done, batch, prepared
        if not batch:
            return
        try:
            done += len(run_batch(batch, prepared, ctx))
        except torch.OutOfMemoryError:
            from silo.evaluation.memory import release_memory

            release_memory(device)
            failures.append(f"{', '.join(j.stem for j in batch)}: out of memory; use a smaller --batch-size or --dtype bfloat16")
            print(f"silo evaluate: error: {failures[-1]}", file=sys.stderr)
        except SiloError as err:
            failures.append(f"{', '.join(j.stem for j in batch)}: {err}")
            print(f"silo evaluate: error: {failures[-1]}", file=sys.stderr)
        batch, prepared = [], []

    for job in progress(todo, not args.no_progress, f"evaluate {tag}".strip()):
        try:
            prep = _prepare(job.item, _load_item(job.item), True, job.task, prior, args, runs, job.stem)
            _remove_leftovers(prep.paths)
        except SiloError as err:
            failures.append(f"{job.item.source}: {err}")
            print(f"silo evaluate: error: {failures[-1]}", file=sys.stderr)
            continue
        if batch and not fits(batch, prepared, job, prep, args.batch_size):
            flush()
        batch.append(job)
        prepared.append(prep)
    flush()
    print(f"silo evaluate: {tag}finished {done}, failed {len(failures)}", file=sys.stderr)

    state.wait_for_everyone()
    if main and not args.no_aggregate:
        summarize_to(out_dir, out_dir, not args.no_fid, args.inception_weights, not args.no_plots)
    return 1 if failures else 0


def summarize_to(folder: Path, out_dir: Path, with_fid: bool, inception_weights: str | None, with_plots: bool) -> dict:
    """Aggregate ``folder`` into ``out_dir`` (tables, then plots) and print the Markdown table."""
    from silo.evaluation.aggregate import aggregate_folder, markdown, write_tables
    from silo.evaluation.plots import matplotlib_missing, plot_tables

    table = aggregate_folder(folder, with_fid, inception_weights)
    paths = write_tables(table, out_dir)
    print(markdown(table))
    if with_plots:
        missing = matplotlib_missing()
        if missing:
            print(f"silo: {missing}", file=sys.stderr)
        else:
            paths += plot_tables(table, Path(out_dir) / "plots")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return table
