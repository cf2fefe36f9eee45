"""The work behind ``silo restore`` (kept apart so ``silo --help`` does not import torch)."""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from silo.degradations.tasks import Task, load_task
from silo.errors import SiloError
from silo.io.inputs import (
    Item,
    dataset_items,
    example_items,
    file_items,
    parse_index_list,
)


@dataclass
class Job:
    """One input ready to run: its tensor (reference or measurement), params and output paths."""

    item: Item
    tensor: Tensor
    params: dict[str, Tensor]
    crop: tuple[int, int]  # image size to crop the result back to
    paths: dict[str, Path]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SiloError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SiloError("--device cuda: no CUDA GPU is available here")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("silo", "torch", "diffusers", "accelerate", "transformers", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _collect_items(args: argparse.Namespace) -> tuple[list[Item], bool]:
    simulate = args.simulate or bool(args.example)
    items: list[Item] = []
    if args.example:
        items += example_items(args.example)
    if args.inputs:
        items += file_items(args.inputs, args.convert_rgb, args.max_pixels)
    dataset_selectors = [args.index is not None, args.start is not None or args.end is not None, args.index_list is not None]
    if args.dataset:
        if sum(dataset_selectors) > 1:
            raise SiloError("choose one of --index, --start/--end, --list")
        indices = None
        if args.index is not None:
            indices = [args.index]
        elif args.start is not None or args.end is not None:
            if args.start is None or args.end is None or args.end <= args.start:
                raise SiloError("--start and --end go together, with --end > --start")
            indices = list(range(args.start, args.end))
        elif args.index_list is not None:
            indices = parse_index_list(args.index_list)
        items += dataset_items(args.dataset, args.split, args.image_column, indices, args.convert_rgb)
    elif any(dataset_selectors):
        raise SiloError("--index/--start/--end/--list select images of a --dataset")
    if not items:
        raise SiloError("nothing to restore: give image files or folders, --example NAME, or --dataset")
    return items, simulate


def _load_models(args: argparse.Namespace, task: Task, preset, device: torch.device):
    from silo.models import default_operator_path, default_prior_path
    from silo.priors.prior import Prior

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    prior_source = args.prior or (preset.prior if preset else None) or default_prior_path()
    operator_source = args.operator
    kind = args.operator_kind or (preset.kind if preset else None)
    if operator_source is None and preset is not None:
        operator_source = preset.operator_path(args.weights_dir)
    if operator_source is None and args.method in ("silo", "silo_x0"):
        operator_source = default_operator_path(task.name, args.operator_kind)
    prior = Prior.from_pretrained(prior_source, device=device, dtype=dtype)
    operator = None
    if operator_source is not None:
        from silo.evaluation.sources import load_task_operator

        operator = load_task_operator(Path(operator_source), kind, prior, task, device)
    return prior, prior_source, operator, operator_source


def _prior_card(prior_source) -> dict:
    """The prior folder's ``silo_prior.json`` (its sampling defaults), or ``{}``."""
    card = Path(str(prior_source)) / "silo_prior.json"
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text())
    except json.JSONDecodeError:
        raise SiloError(f"{card}: not valid JSON") from None
    return data if isinstance(data, dict) else {}


def _default_steps(card: dict, prior_source) -> int:
    try:
        return int(card.get("default_steps", 999))
    except (TypeError, ValueError):
        raise SiloError(f"{prior_source}/silo_prior.json: default_steps must be an integer") from None


def operator_card_eta(operator_source) -> tuple[float | None, int | None]:
    """An operator card's ``recommended_eta`` and the image side it was tuned at (``recommended_eta_size``)."""
    eta = _operator_card_number(operator_source, "recommended_eta")
    size = _operator_card_number(operator_source, "recommended_eta_size")
    if size is not None and (size <= 0 or size != int(size)):
        raise SiloError(f"{operator_source}/model_card.json: recommended_eta_size must be a positive integer, got {size}")
    return eta, (int(size) if eta is not None and size else None)


def _operator_card_number(operator_source, key: str) -> float | None:
    """A number recorded in an operator folder's model card (``recommended_eta``, ...), if any."""
    card = Path(str(operator_source)) / "model_card.json" if operator_source is not None else None
    if card is None or not card.is_file():
        return None
    try:
        value = json.loads(card.read_text()).get(key)
        return float(value) if value is not None else None
    except (ValueError, TypeError, AttributeError):  # not JSON, not an object, not a number
        raise SiloError(f"{card}: {key} must be a number in a JSON object") from None


def _settings(args: argparse.Namespace, task: Task, preset, prior_source, operator_source=None):
    """Sampling settings. SILO's step size: --eta, else the preset's, else the operator card's (scaled from the
    size it was tuned at, ``recommended_eta_size``), else the task's; the measurement clamp: --clamp-measurement,
    else the preset's, else the prior card's ``clamp_measurement``, else the task's;
    the warm start: --start-strength, else the operator card's, else the prior card's, else the task's, else 1."""
    from silo.samplers import SamplerSettings

    eta, eta_size = args.eta, None
    if eta is None and preset:
        eta = preset.eta
    elif eta is None:  # a card's eta was tuned at one size: it is scaled to the image's
        eta, eta_size = operator_card_eta(operator_source)
    if eta is None:
        eta = task.sampling.get("eta", 0.5)
    card = _prior_card(prior_source) if not preset else {}
    clamp = args.clamp_measurement
    if clamp is None and preset:
        clamp = preset.clamp
    if clamp is None:  # the [-4, 4] clamp is about a latent space (SD's): a prior's card can say it does not fit
        clamp = card.get("clamp_measurement")
        if clamp is not None and not isinstance(clamp, bool):
            raise SiloError(f"{prior_source}/silo_prior.json: clamp_measurement must be true or false, got {clamp!r}")
    if clamp is None:
        clamp = bool(task.sampling.get("clamp_measurement", False))
    steps = args.steps or (preset.steps if preset else _default_steps(card, prior_source))
    prompt = args.prompt if args.prompt is not None else (preset.prompt if preset else "")
    if args.cfg_fix and args.guidance_scale == 1.0:
        raise SiloError("--cfg-fix only matters with --guidance-scale > 1")
    if args.steps is not None and args.steps < 1:
        raise SiloError(f"--steps must be >= 1, got {args.steps}")
    if eta < 0 or args.grad_clamp < 0 or args.ddim_eta < 0:
        raise SiloError("--eta, --grad-clamp and --ddim-eta must be >= 0")
    scheduler = args.scheduler or card.get("default_scheduler", "ddpm")
    strength = args.start_strength
    if strength is None and not preset:
        strength = _operator_card_number(operator_source, "recommended_start_strength")
    if strength is None:
        strength = float(card.get("default_start_strength", task.sampling.get("start_strength", 1.0)))
    if not 0.0 < strength <= 1.0:
        raise SiloError(f"--start-strength must be in (0, 1], got {strength}")
    return SamplerSettings(
        steps=steps, scheduler=scheduler, eta=eta, eta_reference_size=eta_size, start_strength=strength, grad_clamp=args.grad_clamp or None,
        clamp_measurement=clamp, guidance_scale=args.guidance_scale, cfg_fix=args.cfg_fix,
        prompt=prompt, negative_prompt=args.negative_prompt, deterministic=args.deterministic, ddim_eta=args.ddim_eta,
    )


def _prepare(item: Item, tensor: Tensor, simulate: bool, task: Task, prior, args, out_dir: Path,
             stem: str) -> Job:
    """Check one loaded input against the task and prior, load its mask/kernel, and name its outputs."""
    from silo.pipeline import padded_size

    deg = task.degradation
    params: dict[str, Tensor] = {}
    h, w = tensor.shape[-2:]
    crop = (h, w) if simulate else deg.image_shape(h, w)
    if crop[0] * crop[1] > args.max_pixels:
        raise SiloError(f"{item.source}: the restored image would be {crop[1]}x{crop[0]}, over --max-pixels {args.max_pixels}")
    if not args.pad:
        try:
            prior.check_image_size(*crop)
        except SiloError as err:
            origin = "" if simulate or (h, w) == crop else f" (restored from a {w}x{h} measurement)"
            raise SiloError(f"{item.source}: {err}{origin}") from None
    if simulate:
        deg.check_size(h, w)
        params = deg.sample_params(tensor.shape, [item.param_seed])
    else:
        if args.mask:
            from silo.io.images import load_mask

            if deg.name != "inpainting":
                raise SiloError(f"--mask is for inpainting tasks, not {task.name}")
            params["mask"] = load_mask(args.mask, crop)
        elif deg.name == "inpainting":
            raise SiloError(f"{item.source}: inpainting a measurement needs --mask (white = known pixels)")
        if args.kernel:
            from silo.io.images import load_kernel

            if "blur" not in deg.name:
                raise SiloError(f"--kernel is for blur tasks, not {task.name}")
            params["kernel"] = load_kernel(args.kernel)[None]
        elif deg.name == "motion_blur":
            raise SiloError(f"{item.source}: deblurring a motion-blurred photo needs its --kernel")
        deg.check_size(*(padded_size(prior, task, *crop) if args.pad else crop))
    paths = {
        "image": out_dir / f"{stem}.png",
        "grid": out_dir / f"{stem}_grid.png",
        "log": out_dir / f"{stem}.json",
    }
    return Job(item, tensor, params, crop, paths)


def _load_item(item: Item) -> Tensor:
    try:
        return item.load()
    except SiloError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise SiloError(f"{item.source}: unreadable image ({err})") from None


def _remove_leftovers(paths: dict[str, Path]) -> None:
    """Images of a run killed before its log was written are not results: clear them so it can resume."""
    for key in ("image", "grid"):
        if paths[key].exists():
            print(f"removing incomplete leftover {paths[key]} (no log beside it)", file=sys.stderr)
            paths[key].unlink()


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.3f}"
    return str(v)


def _clean(obj: Any) -> Any:
    """JSON-safe: infinities become the string 'inf'."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def restore_command(args: argparse.Namespace) -> int:
    from silo.evaluation.metrics import psnr, restoration_metrics
    from silo.evaluation.options import parse_method_options
    from silo.io.grid import make_grid
    from silo.io.images import tensor_to_pil
    from silo.io.outputs import json_bytes, png_bytes, write_group
    from silo.pipeline import NAIVE, logged_settings, method_names, restore
    from silo.presets import get_preset

    preset = get_preset(args.preset) if args.preset else None
    if args.method not in method_names():
        raise SiloError(f"unknown method {args.method!r} (choose from {', '.join(method_names())})")
    configs = parse_method_options(args.method_option, [args.method])
    if len(configs) > 1:
        raise SiloError("--method-option takes one value per option in restore (sweeps are for silo evaluate)")
    method_options = configs[0].option_dict
    if args.method == "silo" and "eta" in method_options:
        raise SiloError("SILO's step size is --eta")
    if args.batch_size < 1:
        raise SiloError("--batch-size must be >= 1")
    if args.degradation:
        from silo.training.user_degradation import user_task

        if args.task or preset:
            raise SiloError("--degradation replaces --task (and --preset): give only one")
        task = user_task(args.degradation, args.noise_sigma or 0.0)
    else:
        task = load_task(args.task or (preset.task if preset else "sr4"), args.noise_sigma)
    if task.noise_sigma < 0:
        raise SiloError("--noise-sigma must be >= 0")
    items, simulate = _collect_items(args)
    if simulate and (args.mask or args.kernel):
        raise SiloError("--mask and --kernel describe a real measurement; with --simulate the task draws its own")
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SiloError(f"--output-dir {out_dir} exists and is not a folder")
    device = resolve_device(args.device)
    prior, prior_source, operator, operator_source = _load_models(args, task, preset, device)
    settings = _settings(args, task, preset, prior_source, operator_source if args.method == "silo" else None)
    if not prior.is_conditional and (settings.prompt or settings.guidance_scale != 1.0):
        print("silo restore: note: the prior is unconditional; --prompt and --guidance-scale have no effect", file=sys.stderr)
    seed = args.seed if not preset or args.seed != 1000 else preset.seed
    show = not args.no_progress

    # --- load and check every input first; a bad one is reported and the others still run
    failures: list[str] = []
    jobs: list[Job] = []
    skipped = 0
    for item in items:
        stem = f"{item.name}_{task.name}_{args.method}_s{seed}"
        if (out_dir / f"{stem}.json").exists():
            skipped += 1
            print(f"skip {item.source}: {out_dir / (stem + '.json')} exists", file=sys.stderr)
            continue
        try:
            job = _prepare(item, _load_item(item), simulate, task, prior, args, out_dir, stem)
            _remove_leftovers(job.paths)
            jobs.append(job)
        except SiloError as err:
            failures.append(f"{item.source}: {err}" if item.source not in str(err) else str(err))
            print(f"silo restore: error: {failures[-1]}", file=sys.stderr)

    # --- batches of equal size
    batches: list[list[Job]] = []
    for job in jobs:
        for batch in batches:
            if len(batch) < args.batch_size and batch[0].tensor.shape == job.tensor.shape and batch[0].params.keys() == job.params.keys():
                batch.append(job)
                break
        else:
            batches.append([job])

    base_log = {
        "command": shlex.join(sys.argv),
        "mode": "simulate" if simulate else "measurement",
        "task": task.to_dict(),
        "method": args.method,
        "method_options": method_options,
        "preset": args.preset,
        "prior": {"source": str(prior_source), **prior.describe()},
        "operator": None if operator is None else {
            "source": str(operator_source), "kind": getattr(operator, "kind", type(operator).__name__),
            "config": {k: v for k, v in dict(operator.config).items() if not k.startswith("_")},
        },
        "settings": logged_settings(args.method, settings),
        "seed": seed,
        "device": device_name(device),
        "versions": library_versions(),
    }
    done = 0
    queue = list(batches)
    while queue:
        batch = queue.pop(0)
        tensors = torch.cat([j.tensor for j in batch])
        params = {k: torch.cat([j.params[k] for j in batch]) for k in batch[0].params}
        try:
            kwargs = {"reference": tensors} if simulate else {"measurement": tensors}
            res = restore(prior, task, settings, [seed] * len(batch), params=params, method=args.method,
                          operator=operator, show_progress=show, pad=args.pad, method_options=method_options, **kwargs)
        except torch.OutOfMemoryError:
            err = SiloError(f"out of memory restoring {batch[0].tensor.shape[-1]}x{batch[0].tensor.shape[-2]} inputs "
                            f"(batch {len(batch)}); use a smaller --batch-size, --dtype bfloat16 or smaller images")
            if len(batch) > 1:
                queue = [[j] for j in batch] + queue
                continue
            failures.append(f"{batch[0].item.source}: {err}")
            print(f"silo restore: error: {failures[-1]}", file=sys.stderr)
            continue
        except SiloError as err:
            if len(batch) > 1:  # retry one by one so one bad image does not lose the others
                queue = [[j] for j in batch] + queue
                continue
            failures.append(f"{batch[0].item.source}: {err}")
            print(f"silo restore: error: {failures[-1]}", file=sys.stderr)
            continue
        deg = task.degradation
        for i, job in enumerate(batch):
            h, w = job.crop
            out = res.output[i : i + 1].cpu()
            a_out = res.a_output[i : i + 1].cpu()
            y = res.measurement[i : i + 1].cpu()
            if simulate:
                ref = res.reference[i : i + 1].cpu()
                metrics = restoration_metrics(out, ref, a_out, res.a_reference[i : i + 1].cpu())[0]
                panels = [("x", ref), ("A(x)+n", y), ("output", out), ("A(output)", a_out)]
            else:
                metrics = {"consistency_psnr_vs_measurement": psnr(a_out, y)[0]}
                panels = [("y", y), ("output", out), ("A(output)", a_out)]
            metrics["seconds"] = res.seconds / len(batch)  # per image: the batch's wall time shared out
            metrics["seconds_per_step"] = res.seconds / len(batch) / res.steps if res.steps else None
            line = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()
                              if isinstance(v, (float, int)) and not k.endswith("_note"))
            log = {
                **base_log,
                "input": job.item.source,
                "name": job.item.name,
                "image_size": [h, w],
                "batch_size": len(batch),
                "metrics": metrics,
                "sampling_seconds": res.seconds,
                "outputs": {k: p.name for k, p in job.paths.items() if k == "log" or args.save in (k, "both")},
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            files: dict[Path, bytes] = {}
            if args.save in ("image", "both"):
                files[job.paths["image"]] = png_bytes(tensor_to_pil(out))
            if args.save in ("grid", "both"):
                run = "no sampling" if args.method == NAIVE else f"{settings.steps} steps | eta {settings.eta}"
                lines = [f"{task.name} | {args.method} | {run} | seed {seed}", line]
                files[job.paths["grid"]] = png_bytes(make_grid(panels, lines))
            files[job.paths["log"]] = json_bytes(_clean(log))  # the log last: its presence marks the result done
            try:
                write_group(files)
            except SiloError as err:
                failures.append(str(err))
                print(f"silo restore: error: {err}", file=sys.stderr)
                continue
            done += 1
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if k in ("psnr", "ssim", "consistency_psnr", "consistency_psnr_vs_measurement", "seconds"))
            print(f"{job.item.source} -> {job.paths['log'].with_suffix('')}.* ({shown})")
    print(f"restored {done}, skipped {skipped} (already done), failed {len(failures)}", file=sys.stderr)
    return 1 if failures else 0
