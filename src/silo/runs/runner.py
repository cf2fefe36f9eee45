"""The runner every front door calls: inputs x setups x seeds -> one result each (image, grid, JSON log).

Guarantees: a bad input is reported and the others still run; a batch that fails (out of memory, a
sampler error) is retried image by image; every result is written atomically, log last, and never over an
existing file; a result whose log exists is skipped, so a rerun resumes. Inputs are decoded a batch at a
time (memory flat in their number); an image the device's memory cannot take is refused before sampling
(:mod:`silo.runs.budget`); each result is claimed before it is restored (:mod:`silo.io.claims`), so runs
sharing a folder split the work and only a dead run's leftovers are ever removed; a write error is one line
and the other results go on. A result's name carries a key of
everything that changes its pixels (:mod:`silo.runs.identity`): a rerun with other settings writes a new
result beside the old one.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from silo.errors import SiloError
from silo.io.inputs import Item
from silo.runs.identity import Identity, identify
from silo.settings import Resolved


@dataclass
class Setup:
    """What a result is restored with, besides its input and seed: prior, task, method, operator, settings."""

    prior: Any
    prior_source: str
    task: Any
    method: str
    resolved: Resolved
    operator: torch.nn.Module | None = None
    preset: str | None = None

    @property
    def kind(self) -> str | None:
        return getattr(self.operator, "kind", None) if self.operator is not None else None

    @property
    def explicit_options(self) -> dict[str, float]:
        """The method options the user set (they label a table row: ``ldps(zeta=0.5)``)."""
        opts = {
            k: v
            for k, v in self.resolved.method_options.items()
            if self.resolved.sources.get(f"method_options.{k}") == "request"
        }
        if self.method == "silo" and self.resolved.sources.get("eta") == "request" and "eta" not in opts:
            opts["eta"] = self.resolved.settings.eta
        return opts

    @property
    def label(self) -> str:
        from silo.evaluation.records import method_label

        return method_label(self.method, self.kind, self.explicit_options)

    @property
    def slug(self) -> str:
        """The method part of a result's name: the method and the options the user set (``ldps-zeta0.5``)."""
        from silo.evaluation.records import method_slug

        return method_slug(self.method, None, self.explicit_options)


@dataclass
class Request:
    item: Item
    setup: Setup
    seed: int


@dataclass
class RunOptions:
    """How a run treats its inputs and writes its results."""

    output_dir: Path | None  # None: nothing written, results kept in memory (the Python front door)
    simulate: bool = True
    save: str = "both"  # "image", "grid", "both" or "none" (the log is always written)
    pad: bool = False
    batch_size: int = 1
    max_pixels: int = 4096 * 4096
    mask: str | None = None  # measurement mode: the inpainting mask file
    kernel: str | None = None  # measurement mode: the blur kernel file
    lpips: bool = True
    measure_memory: bool = False
    references: Path | None = None  # write each clean reference once here (FID/KID read them)
    show_progress: bool = True
    command: str = "silo"  # prefix of printed errors
    dtype: str = "float32"
    log_extra: dict[str, Any] = field(default_factory=dict)
    callback: Callable[[dict[str, Any]], None] | None = None  # each sampling step
    on_result: Callable[[Path, dict[str, Any]], None] | None = None  # each written result
    quiet: bool = False  # no line per result on stdout
    keep_outputs: bool = False  # keep each result's log and output tensor in the report (the Python front door)
    memory_limit: float | None = None  # bytes a restoration may need; None: what the device has; 0: no check


@dataclass
class Job:
    request: Request
    tensor: Tensor
    params: dict[str, Tensor]
    crop: tuple[int, int]
    identity: Identity
    paths: dict[str, Path]
    order: int = 0  # position among the requests: results come back in this order
    claim: Any = None  # this run's claim on the result (silo.io.claims.Claim) while it works on it


@dataclass
class Report:
    done: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)  # with keep_outputs: "log", "output", "path"

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def load_item(item: Item) -> Tensor:
    try:
        return item.load()
    except SiloError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise SiloError(f"{item.source}: unreadable image ({err})") from None


def check_measurement_options(task, mask: str | None, kernel: str | None, source: str = "") -> None:
    """A real measurement's mask and kernel against the degradation's capabilities: errors of the whole run,
    said once before any model is loaded."""
    deg = task.degradation
    where = f"{source}: " if source else ""
    if mask and not deg.uses_mask:
        raise SiloError(f"--mask is for inpainting tasks, not {task.name}")
    if not mask and deg.uses_mask:
        raise SiloError(f"{where}inpainting a measurement needs --mask (white = known pixels)")
    if kernel and not deg.uses_kernel:
        raise SiloError(f"--kernel is for blur tasks, not {task.name}")
    if not kernel and deg.needs_kernel:
        raise SiloError(f"{where}deblurring this measurement needs its --kernel")
    if kernel:
        from silo.io.images import load_kernel

        load_kernel(kernel)  # an unreadable kernel file: said now, not once per image


def _measurement_params(task, crop: tuple[int, int], options: RunOptions, source: str) -> dict[str, Tensor]:
    """A real measurement's mask and kernel, from files, as the degradation's capabilities ask."""
    check_measurement_options(task, options.mask, options.kernel, source)
    params: dict[str, Tensor] = {}
    if options.mask:
        from silo.io.images import load_mask

        notes: list[str] = []
        params["mask"] = load_mask(options.mask, crop, notes)
        for text in notes:
            _note(options, text)
    if options.kernel:
        from silo.io.images import load_kernel

        params["kernel"] = load_kernel(options.kernel)[None]
    return params


_NOTED: set[str] = set()


def _note(options: RunOptions, text: str) -> None:
    """A note said once per process (a renamed task is said once, not per image)."""
    if text not in _NOTED and not options.quiet:
        _NOTED.add(text)
        say(f"{options.command}: note: {text}", err=True)


def result_stem(item: Item, task_name: str, slug: str, seed: int, key: str, options: RunOptions) -> str:
    """``NAME_TASK_METHOD_sSEED_KEY``, every part a safe file-name component (a task name from a YAML file
    cannot become a path), shortened to fit the file system's name limit; a name that changed is said."""
    from silo.io.outputs import NAME_MAX, NAME_OVERHEAD, fit_stem, safe_name

    task_part = safe_name(task_name)
    if task_part != task_name:
        _note(options, f"task name {task_name!r} is written as {task_part!r} in file names")
    head = f"{safe_name(item.name)}_{task_part}_{safe_name(slug)}"
    tail = f"_s{seed}_{key}"
    short = fit_stem(head, NAME_MAX - NAME_OVERHEAD - len(tail.encode()))
    if short != head:
        _note(
            options,
            f"{item.source}: file names shortened to {short}{tail}* (the full name is over the file "
            f"system's {NAME_MAX}-byte limit)",
        )
    return short + tail


def _check_memory(setup: Setup, crop: tuple[int, int], options: RunOptions, source: str) -> None:
    """Refuse an image whose restoration would not fit the device (:mod:`silo.runs.budget`), before work."""
    from silo.runs.budget import check_memory

    tile = int(getattr(setup.resolved.settings, "tile_size", 0) or 0)  # tiled: the networks see a tile at a time
    check_memory(
        setup.prior, setup.method, *crop, options.batch_size, options.dtype, options.memory_limit, source, tile
    )


def prepare(request: Request, tensor: Tensor, options: RunOptions) -> Job:
    """Check one loaded input against the task and prior, draw or load its parameters, and name its result."""
    from silo.pipeline import padded_size

    setup, item = request.setup, request.item
    task, prior, deg = setup.task, setup.prior, setup.task.degradation
    h, w = tensor.shape[-2:]
    crop = (h, w) if options.simulate else deg.image_shape(h, w)
    if crop[0] * crop[1] > options.max_pixels:
        raise SiloError(
            f"{item.source}: the restored image would be {crop[1]}x{crop[0]}, over --max-pixels {options.max_pixels}"
        )
    if not options.pad:
        try:
            prior.check_image_size(*crop)
        except SiloError as err:
            origin = "" if options.simulate or (h, w) == crop else f" (restored from a {w}x{h} measurement)"
            raise SiloError(f"{item.source}: {err}{origin}") from None
    if options.simulate:
        deg.check_size(h, w)
        params = deg.sample_params(tensor.shape, [item.param_seed])
    else:
        params = _measurement_params(task, crop, options, item.source)
        deg.check_size(*(padded_size(prior, task, *crop) if options.pad else crop))
    _check_memory(setup, crop, options, item.source)
    identity = identify(setup, request.seed, tensor, params, item, options)
    stem = result_stem(item, task.name, setup.slug, request.seed, identity.key[:8], options)
    out = options.output_dir or Path(".")
    paths = {"image": out / f"{stem}.png", "grid": out / f"{stem}_grid.png", "log": out / f"{stem}.json"}
    return Job(request, tensor, params, crop, identity, paths)


def _skip_text(item: Item, why: str) -> str:
    return f"skip {item.source}: {why}"


class _Loader:
    """Decodes inputs one at a time, keeping only the last (the requests of one input come together), so memory
    stays flat in the number of inputs."""

    def __init__(self) -> None:
        self.key: int | None = None
        self.tensor: Tensor | None = None

    def __call__(self, item: Item) -> Tensor:
        key = id(item.load)
        if key != self.key:
            self.key, self.tensor = None, None  # the previous input is freed before the next is decoded
            self.tensor, self.key = load_item(item), key
        return self.tensor


def _fail(report: Report, options: RunOptions, source: str, err: BaseException) -> None:
    text = str(err) if isinstance(err, SiloError) else f"{type(err).__name__}: {err}"
    report.failures.append(text if source in text else f"{source}: {text}")
    say(f"{options.command}: error: {report.failures[-1]}", err=True)


def _next_window(
    pending, options: RunOptions, report: Report, loader: _Loader, planned: set[Path], deferred: list | None
) -> list[Job]:
    """Up to ``batch_size`` jobs, each loaded, checked and claimed; finished results skipped, results another
    live run holds deferred (or, on the second pass, skipped). A bad input costs only itself."""
    jobs: list[Job] = []
    try:
        _fill_window(jobs, pending, options, report, loader, planned, deferred)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM) while claiming: the claims taken so far go back
        for job in jobs:
            if job.claim is not None:
                job.claim.release()
        raise
    return jobs


def _fill_window(
    jobs: list[Job],
    pending,
    options: RunOptions,
    report: Report,
    loader: _Loader,
    planned: set[Path],
    deferred: list | None,
) -> None:
    while len(jobs) < options.batch_size:
        try:
            order, request = next(pending)
        except StopIteration:
            break
        item = request.item
        try:
            job = prepare(request, loader(item), options)
        except Exception as err:  # noqa: BLE001 - one bad input costs only itself, said in one line
            _fail(report, options, item.source, err)
            continue
        job.order = order
        if options.output_dir is not None and job.paths["log"] in planned:
            report.skipped += 1  # the same result asked twice (repeated seeds or methods): made once
            continue
        planned.add(job.paths["log"])
        if options.output_dir is None:
            jobs.append(job)
            continue
        if job.paths["log"].exists():
            _skip_done(job, options, report)
            continue
        from silo.io.claims import Holder, claim

        try:
            got = claim(job.paths["log"], [job.paths["image"], job.paths["grid"]])
        except SiloError as err:
            _fail(report, options, item.source, err)
            continue
        if got is None:  # finished meanwhile by another run
            _skip_done(job, options, report)
        elif isinstance(got, Holder):
            if deferred is not None:
                planned.discard(job.paths["log"])
                deferred.append((order, request))  # another run is on it: come back once at the end
            else:
                report.skipped += 1
                if not options.quiet:
                    say(_skip_text(item, f"another run ({got.describe()}) is restoring it"), err=True)
        else:
            job.claim = got
            jobs.append(job)


def _skip_done(job: Job, options: RunOptions, report: Report) -> None:
    if options.output_dir is not None:
        from silo.io.claims import tidy_finished

        tidy_finished(job.paths["log"], [job.paths["image"], job.paths["grid"]])
    report.skipped += 1
    if not options.quiet:
        say(_skip_text(job.request.item, f"{job.paths['log']} exists"), err=True)
    if options.keep_outputs:
        report.results.append({**_finished(job), "order": job.order})


def _finished(job: Job) -> dict[str, Any]:
    """A finished result read back (the Python front door returns it like a new one)."""
    import json

    from silo.io.images import load_image

    log = json.loads(job.paths["log"].read_text())
    image = load_image(job.paths["image"], False, 1 << 62) if job.paths["image"].exists() else None
    return {"log": log, "output": image, "path": job.paths["log"]}


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """Batches of one setup and seed, equal tensor sizes and parameter names, at most ``size`` each."""
    out: list[list[Job]] = []
    for job in jobs:
        for batch in out:
            first = batch[0]
            if (
                len(batch) < size
                and first.request.setup is job.request.setup
                and first.request.seed == job.request.seed
                and first.tensor.shape == job.tensor.shape
                and first.params.keys() == job.params.keys()
            ):
                batch.append(job)
                break
        else:
            out.append([job])
    return out


def run(requests: list[Request], options: RunOptions) -> Report:
    """Restore every request; see the module's docstring for what is guaranteed.

    Inputs are decoded a batch at a time; before a result is restored the run claims it
    (:mod:`silo.io.claims`), so runs sharing an output folder split the work: a result another live run holds
    is left to it and looked at again once at the end."""
    report = Report()
    if options.output_dir is not None:
        ensure_writable(options.output_dir)
    loader, planned, deferred = _Loader(), set(), []
    passes = [(iter(enumerate(requests)), deferred), (None, None)]
    for pending, defer_to in passes:
        if pending is None:
            pending = iter(list(deferred))
        while True:
            window: list[Job] = []
            try:  # a claim is given back however the window ends (done, failed, interrupted)
                window = _next_window(pending, options, report, loader, planned, defer_to)
                if not window:
                    break
                _run_window(window, options, report)
            finally:
                for job in window:
                    if job.claim is not None:
                        job.claim.release()
    report.results.sort(key=lambda r: r.get("order", 0))  # the requests' order
    return report


def _run_window(jobs: list[Job], options: RunOptions, report: Report) -> None:
    queue = batches(jobs, options.batch_size)
    while queue:
        batch = queue.pop(0)
        try:
            results = _restore_batch(batch, options)
        except Exception as err:  # noqa: BLE001 - out of memory, a sampler or user degradation failing, ...
            from silo.evaluation.memory import release_memory

            release_memory(batch[0].request.setup.prior.device)
            if len(batch) > 1:  # retry one by one so one bad image does not lose the others
                queue = [[j] for j in batch] + queue
                continue
            if isinstance(err, torch.OutOfMemoryError):
                h, w = batch[0].crop
                err = SiloError(f"out of memory restoring a {w}x{h} image; use --dtype bfloat16 or a smaller image")
            elif not isinstance(err, SiloError):
                err = SiloError(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
            _fail(report, options, batch[0].request.item.source, err)
            continue
        for job, (files, log, output) in zip(batch, results):
            if options.output_dir is None:
                report.done += 1
                if options.keep_outputs:
                    report.results.append({"log": log, "output": output, "path": None, "order": job.order})
                continue
            try:
                from silo.io.outputs import write_group

                write_group(files)
            except (SiloError, OSError) as err:  # a full disk, an unwritable folder: said, and the others go on
                text = str(err) if isinstance(err, SiloError) else write_error(err)
                _fail(report, options, job.request.item.source, SiloError(text))
                continue
            report.done += 1
            report.logs.append(job.paths["log"])
            if options.keep_outputs:
                report.results.append({"log": log, "output": output, "path": job.paths["log"], "order": job.order})
            if options.on_result is not None:
                options.on_result(job.paths["log"], log)
            if not options.quiet:
                shown = ", ".join(
                    f"{k} {_fmt(v)}"
                    for k, v in log["metrics"].items()
                    if k in ("psnr", "ssim", "consistency_psnr", "consistency_psnr_vs_measurement", "seconds")
                )
                say(f"{job.request.item.source} -> {job.paths['log'].with_suffix('')}.* ({shown})")


def check_writable(folder: Path, what: str = "output folder") -> Path:
    """SiloError (one line) unless ``folder`` could be made and written: its nearest existing ancestor is a
    folder this process may write, on a file system mounted read-write. Nothing is created."""
    import os

    for parent in [folder, *folder.parents]:
        try:
            if not parent.exists():
                continue
        except OSError as err:  # a name too long, a loop of links
            raise SiloError(f"{what} {folder}: {err.strerror or err}") from None
        if not parent.is_dir():
            raise SiloError(f"{what} {folder}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            try:
                readonly = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
            except OSError:
                readonly = False
            why = "Read-only file system" if readonly else "Permission denied"
            raise SiloError(f"{what} {folder}: cannot write here ({why})")
        break
    return folder


def ensure_writable(folder: Path, what: str = "output folder") -> Path:
    """Make ``folder`` and write a test file in it (removed at once); SiloError with the reason if either fails."""
    import os
    import tempfile

    check_writable(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".silo-write-test.", dir=folder)
        try:
            os.write(fd, b"x" * 4096)  # a full file system refuses the data, not always the empty file
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise SiloError(f"{what} {folder}: cannot write here ({err.strerror or err})") from None
    return folder


def write_error(err: OSError) -> str:
    """One line for a failed write: the path and the system's reason (full disk, read-only, name too long)."""
    path = err.filename or "?"
    return f"{path}: cannot write ({err.strerror or err})"


_STDOUT_GONE = False


def say(text: str, err: bool = False) -> None:
    """Print one line; a closed pipe (``silo restore ... | head``) stops the printing, never the work."""
    global _STDOUT_GONE
    if not err and _STDOUT_GONE:
        return
    stream = sys.stderr if err else sys.stdout
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        import os

        if err:
            return
        _STDOUT_GONE = True
        try:  # later writes (and the interpreter's final flush) go nowhere instead of failing
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass


def _fmt(v: Any) -> str:
    import math

    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.3f}"
    return str(v)


def _heartbeat(batch: list[Job], callback: Callable[[dict[str, Any]], None] | None):
    """The step callback, refreshing the batch's claims as it goes (a live run's claims never look stale)."""
    claims = [j.claim for j in batch if j.claim is not None]
    if not claims:
        return callback

    def step(info: dict[str, Any]) -> None:
        for c in claims:
            c.refresh()
        if callback is not None:
            callback(info)

    return step


def _restore_batch(batch: list[Job], options: RunOptions) -> list[tuple[dict[Path, bytes], dict[str, Any], Tensor]]:
    """Sample one batch and build each result's files (log last); nothing is written here."""
    from contextlib import nullcontext

    from silo.evaluation.memory import PeakMemory, max_rss, release_memory
    from silo.evaluation.metrics import psnr, restoration_metrics
    from silo.io.grid import make_grid
    from silo.io.images import tensor_to_pil
    from silo.io.outputs import json_bytes, json_safe, png_bytes, write_new
    from silo.pipeline import padded_size, restore
    from silo.provenance import device_name, fingerprint, library_versions, prior_fingerprint
    from silo.samplers.registry import NAIVE

    first = batch[0]
    setup, seed = first.request.setup, first.request.seed
    prior, task = setup.prior, setup.task
    size = padded_size(prior, task, *first.crop) if options.pad else first.crop
    resolved = setup.resolved.at_size(*size)
    tensors = torch.cat([j.tensor for j in batch])
    params = {k: torch.cat([j.params[k] for j in batch]) for k in first.params}
    kwargs = {"reference": tensors} if options.simulate else {"measurement": tensors}
    device = prior.device
    if options.measure_memory:
        release_memory(device)
    meter = PeakMemory(device) if options.measure_memory else nullcontext()
    with meter as mem:
        res = restore(
            prior,
            task,
            resolved.settings,
            [j.identity.image_seed for j in batch],
            params=params,
            method=setup.method,
            operator=setup.operator,
            callback=_heartbeat(batch, options.callback),
            show_progress=options.show_progress,
            pad=options.pad,
            method_options=resolved.method_options,
            **kwargs,
        )
    settings_log = resolved.values()
    operator = setup.operator
    base = {
        "schema": "silo.result/2",
        "command": shlex.join(sys.argv),
        "mode": "simulate" if options.simulate else "measurement",
        "task": task.to_dict(),
        "method": setup.method,
        "method_label": setup.label,
        "method_options": dict(resolved.method_options),
        "preset": setup.preset,
        "prior": {"source": str(setup.prior_source), **prior.describe(), "fingerprint": prior_fingerprint(prior)},
        "operator": None
        if operator is None
        else {
            "source": getattr(operator, "source", None),
            "kind": setup.kind,
            "config": {k: v for k, v in dict(operator.config).items() if not k.startswith("_")},
            "fingerprint": fingerprint(operator),
            "mismatch_allowed": getattr(operator, "mismatch_allowed", None),
        },  # --allow-operator-mismatch: why
        "settings": {k: v for k, v in settings_log.items() if k not in ("seed", "method_options")},
        "setting_sources": {
            **resolved.sources,
            "seed": resolved.sources["seed"] if seed == resolved.seed else "request",
        },
        "seed": seed,
        "dtype": options.dtype,
        "device": device_name(device),
        "tiling": res.tiling,  # None: restored in one piece
        "offload": sorted(getattr(prior, "offload", ())),
        "versions": library_versions(),
        **options.log_extra,
    }
    out = []
    for i, job in enumerate(batch):
        h, w = job.crop
        output = res.output[i : i + 1, :, :h, :w].cpu()
        a_out = res.a_output[i : i + 1].cpu()
        y = res.measurement[i : i + 1].cpu()
        if options.simulate:
            ref = res.reference[i : i + 1, :, :h, :w].cpu()
            mask = task.degradation.mask(res.params)  # inpainting: the known region and the hole apart
            mask = None if mask is None else mask[i : i + 1, :, :h, :w].cpu()
            metrics = restoration_metrics(
                output,
                ref,
                a_out,
                res.a_reference[i : i + 1].cpu(),
                with_lpips=options.lpips,
                mask=mask,
                measurement=None if mask is None else y,
            )[0]
            panels = [("x", ref), ("A(x)+n", y), ("output", output), ("A(output)", a_out)]
        else:
            metrics = {"consistency_psnr_vs_measurement": psnr(a_out, y)[0]}
            panels = [("y", y), ("output", output), ("A(output)", a_out)]
        metrics["seconds"] = res.seconds / len(batch)  # per image: the batch's wall time shared out
        metrics["seconds_per_step"] = res.seconds / len(batch) / res.steps if res.steps else None
        log: dict[str, Any] = {
            **base,
            "identity": job.identity.to_log(),
            "image_seed": job.identity.image_seed,
            "input": job.request.item.source,
            "name": job.request.item.name,
            "image_size": [h, w],
            "batch_size": len(batch),
            "metrics": metrics,
            "sampling_seconds": res.seconds,
            "outputs": {k: p.name for k, p in job.paths.items() if k == "log" or options.save in (k, "both")},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if options.measure_memory:
            metrics["peak_memory_bytes"] = mem.peak
            log["memory"] = {**mem.result(), "process_max_rss_bytes": max_rss()}
        if options.references is not None and options.simulate and options.output_dir is not None:
            from silo.io.outputs import fit_stem

            ref_path = options.references / f"{fit_stem(job.request.item.name)}.png"
            if not ref_path.exists():
                try:
                    write_new(ref_path, png_bytes(tensor_to_pil(ref)))
                except SiloError:
                    pass  # written meanwhile by another process: the same bytes
                except OSError as err:
                    raise SiloError(write_error(err)) from None
            log["reference_image"] = f"../{options.references.name}/{ref_path.name}"
        files: dict[Path, bytes] = {}
        if options.save in ("image", "both"):
            files[job.paths["image"]] = png_bytes(tensor_to_pil(output))
        if options.save in ("grid", "both"):
            s = resolved.settings
            what = "no sampling" if setup.method == NAIVE else f"{s.steps_run}/{s.steps} steps | eta {s.eta:.3g}"
            line = " | ".join(
                f"{k} {_fmt(v)}"
                for k, v in metrics.items()
                if isinstance(v, (float, int)) and not k.endswith("_note") and k != "peak_memory_bytes"
            )
            files[job.paths["grid"]] = png_bytes(
                make_grid(panels, [f"{task.name} | {setup.label} | {what} | seed {seed}", line])
            )
        files[job.paths["log"]] = json_bytes(json_safe(log))  # the log last: its presence marks the result done
        out.append((files, log, output))
    return out
