"""What the web page does, without the page: one request -> the runner of ``silo restore`` -> results.

The page (:mod:`silo.web.app`) only collects a :class:`PageRequest` and shows a :class:`PageResult`. Here the
request is turned into the runner's terms: the task (:func:`silo.runs.restore.load_run_task`), the method's
setup with its settings resolved by :func:`silo.settings.resolve` (:func:`silo.runs.restore.build_setup`), one
item per input and one request per seed, run by :func:`silo.runs.runner.run` into the output folder the server
named at start-up. The models are loaded once, when the server starts, so a request pays only for sampling.

Only files the browser uploaded (and the bundled examples) are read: no path a user types is opened.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from silo.errors import SiloError

if TYPE_CHECKING:
    from silo.runs.models import Models

#: the metrics the page shows, in this order, when the log has them (every metric is in the JSON log)
SHOWN_METRICS = (
    "psnr",
    "ssim",
    "ms_ssim",
    "lpips_alex",
    "psnr_hole",
    "psnr_known",
    "consistency_psnr",
    "consistency_psnr_vs_measurement",
    "seconds",
)
MODES = ("measurement", "simulate")


@dataclass
class PageRequest:
    """What the page asks for: one input (an upload or a bundled example), a task, a method and settings.

    ``upload``, ``mask_upload`` and ``kernel_upload`` are files the browser uploaded (the server's copies);
    ``mask`` is a painted mask (``H x W``, True = known pixel). Settings left at None are resolved as in
    ``silo restore`` (request > operator card > prior card > task > default).
    """

    upload: str | None = None
    example: str | None = None
    mode: str = "measurement"
    task: str = "sr4"
    method: str = "silo"
    steps: int | None = None
    step_size: float | None = None  # SILO's eta, or the method's first step-size option (zeta, step)
    start_strength: float | None = None
    seed: int | None = None
    seeds: int = 1  # a batch of seeds: seed, seed + 1, ...
    pad: bool = True
    convert_rgb: bool = False
    mask: np.ndarray | None = None
    mask_upload: str | None = None
    kernel_upload: str | None = None
    kernel_seed: int | None = None


@dataclass
class PageResult:
    """One restoration per seed, as written by the runner: image, grid and log paths and the log itself."""

    images: list[Path] = field(default_factory=list)
    grids: list[Path] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # results that were already in the output folder (the same request made before)

    @property
    def log(self) -> dict[str, Any]:
        return self.records[0]


class Service:
    """The server's state: the models (loaded once), the output folder and the input limits."""

    def __init__(
        self,
        models: Models,
        output_dir: str | Path,
        *,
        max_pixels: int = 2048 * 2048,
        dtype: str = "float32",
        lpips: bool = True,
    ) -> None:
        from silo.runs.restore import check_output_dir

        self.models = models
        self.output_dir = check_output_dir(output_dir)
        self.max_pixels = int(max_pixels)
        self.dtype = dtype
        self.lpips = lpips
        self._setups: dict[tuple, Any] = {}
        self._lock = threading.Lock()  # operators and settings are cached: one job builds them at a time

    @classmethod
    def start(
        cls,
        prior: str | None = None,
        operators: list[str] | None = None,
        operator_kind: str | None = None,
        device: str = "auto",
        dtype: str = "float32",
        output_dir: str | Path = "outputs",
        max_pixels: int = 2048 * 2048,
        lpips: bool = True,
    ) -> Service:
        """Load the prior (default: the shipped silo-tiny) once, for every request the server will answer."""
        from silo.provenance import resolve_device, resolve_dtype
        from silo.runs.models import Models
        from silo.runs.restore import check_output_dir

        out = Path(output_dir)
        check_output_dir(out)  # a file in the way is said before the prior loads
        models = Models.load(prior, resolve_device(device), resolve_dtype(dtype), operators, operator_kind)
        return cls(models, out, max_pixels=max_pixels, dtype=dtype, lpips=lpips)

    # ---- what the page lists ---------------------------------------------------------------------------
    @staticmethod
    def tasks() -> list[str]:
        """The shipped tasks (``silo tasks``)."""
        from silo.degradations.tasks import list_tasks

        return list_tasks()

    @staticmethod
    def examples() -> list[str]:
        """The bundled example photos (``--example``)."""
        from silo.data.photos import example_names

        return example_names()

    def methods(self, task_name: str) -> list[str]:
        """The registered methods that apply to the task with this server's operators, in registry order."""
        from silo.degradations.tasks import load_task
        from silo.samplers.registry import method_names, refusal, uses_operator

        task = load_task(task_name)
        out = []
        for method in method_names():
            try:
                with self._lock:
                    operator = self.models.operator(task, method) if uses_operator(method) else None
            except SiloError:  # no operator for this task (another prior without --operator TASK=PATH)
                continue
            if refusal(method, task.degradation, operator) is None:
                out.append(method)
        return out

    @staticmethod
    def step_size_name(method: str) -> str | None:
        """The step size the page's "eta / step size" field sets for a method: SILO's eta, else its first option."""
        from silo.samplers.registry import sampler_options

        if method == "silo":
            return "eta"
        options = sampler_options(method)
        return next(iter(options), None)

    def defaults(self, task_name: str, method: str) -> dict[str, str]:
        """What the page's blank fields resolve to for a task and method, with the source (placeholders)."""
        with self._lock:
            setup = self._setup(PageRequest(task=task_name), method)
        r = setup.resolved
        s = r.settings
        eta = (
            f"{s.eta:g} at {s.eta_reference_size} px, scaled to the image side ({r.sources['eta']})"
            if s.eta_reference_size
            else f"{s.eta:g} ({r.sources['eta']})"
        )
        name = self.step_size_name(method)
        step = (
            eta if name == "eta" else (f"{name} {r.method_options[name]:g} (the method's default)" if name else "none")
        )
        return {
            "steps": f"{s.steps} ({r.sources['steps']})",
            "step_size": step,
            "start_strength": f"{s.start_strength:g} ({r.sources['start_strength']})",
            "seed": f"{r.seed} ({r.sources['seed']})",
        }

    def draw_kernel(self, task_name: str, seed: int) -> np.ndarray:
        """A blur kernel of the task drawn from a seed (motion blur), or the task's fixed kernel (Gaussian)."""
        from silo.degradations.tasks import load_task

        deg = load_task(task_name).degradation
        if not deg.uses_kernel:
            raise SiloError(f"task {task_name} has no blur kernel")
        if deg.random_params:
            k = deg.sample_params((1, 3, 64, 64), [int(seed)])["kernel"][0]
        else:
            k = deg.blur_kernel(None)
        return np.asarray(k.detach().cpu().float().numpy(), dtype=np.float64)

    # ---- one request ---------------------------------------------------------------------------------
    def restore(
        self, request: PageRequest, on_step: Callable[[int, int], None] | None = None, method: str | None = None
    ) -> PageResult:
        """Restore the request's input through the runner; results land in the output folder.

        ``on_step(done, total)`` is called after every sampling step of every seed. Raises
        :class:`SiloError` with one line (the CLI's message, naming the uploaded file) on bad input or a failed
        job; a failed job writes nothing.
        """
        from silo.runs.items import Inputs
        from silo.runs.restore import RestoreConfig, restore_inputs
        from silo.runs.runner import Report

        method = method or request.method
        simulate = request.mode == "simulate" or request.example is not None
        if request.mode not in MODES:
            raise SiloError(f"unknown mode {request.mode!r} (choose from {', '.join(MODES)})")
        if request.seeds < 1 or request.seeds > 16:
            raise SiloError(f"the number of seeds must be in 1..16, got {request.seeds}")
        item, upload = self._item(request)
        with self._lock:
            setup = self._setup(request, method)  # for the progress bar's length; the run resolves its own
        seed = setup.resolved.seed
        total = max(1, setup.resolved.settings.steps_run if method != "naive" else 1) * request.seeds
        done = [0]

        def callback(_info: dict[str, Any]) -> None:
            done[0] += 1
            if on_step is not None:
                on_step(min(done[0], total), total)

        settings, options = self._asked(request, method)
        report = Report()
        with tempfile.TemporaryDirectory(prefix="silo-serve-") as tmp:
            mask, kernel = self._measurement_files(request, setup.task, simulate, Path(tmp))
            names = {
                str(Path(p)): label
                for p, label in (
                    (upload, Path(upload or "").name),
                    (request.mask_upload, f"mask {Path(request.mask_upload or '').name}"),
                    (request.kernel_upload, f"kernel {Path(request.kernel_upload or '').name}"),
                    (mask, "painted mask"),
                    (kernel, "drawn kernel"),
                )
                if p
            }
            try:
                for j in range(request.seeds):  # one run per seed, as `silo restore --seed S` makes it
                    config = RestoreConfig(
                        inputs=Inputs(max_pixels=self.max_pixels),
                        simulate=simulate,
                        task=request.task,
                        method=method,
                        method_options=options,
                        settings={**settings, "seed": request.seed if j == 0 else seed + j},
                        dtype=self.dtype,
                        output_dir=self.output_dir,
                        save="both",
                        pad=request.pad,
                        mask=mask,
                        kernel=kernel,
                        show_progress=False,
                        lpips=self.lpips,
                        command="silo serve",
                        keep_outputs=True,
                        quiet=True,
                    )
                    part = restore_inputs(config, [item], models=self.models, callback=callback)
                    report.done += part.done
                    report.skipped += part.skipped
                    report.failures += part.failures
                    report.results += part.results
                    if part.failures:
                        break
            except SiloError as err:
                raise SiloError(_clean(str(err), names)) from None
        if report.failures:
            raise SiloError(_clean("; ".join(report.failures), names))
        result = PageResult(skipped=report.skipped)
        for r in report.results:
            log_path = Path(r["path"])
            log = r["log"] if r["log"] is not None else json.loads(log_path.read_text())
            outputs = log.get("outputs", {})
            result.logs.append(log_path)
            result.images.append(log_path.parent / outputs.get("image", log_path.with_suffix(".png").name))
            result.grids.append(log_path.parent / outputs.get("grid", log_path.stem + "_grid.png"))
            result.records.append(log)
        return result

    def _item(self, request: PageRequest):
        """The input as the runner's item: an uploaded file (named by its file name) or a bundled example."""
        from silo.io.inputs import example_items, file_items

        if request.example and request.upload:
            raise SiloError("give a photo or an example, not both")
        if request.example:
            if request.example not in self.examples():
                raise SiloError(f"unknown example {request.example!r}; choose one of: {', '.join(self.examples())}")
            return example_items([request.example])[0], None
        if not request.upload:
            raise SiloError("nothing to restore: upload a photo or pick an example")
        path = Path(request.upload)
        try:
            (item,) = file_items([str(path)], request.convert_rgb, self.max_pixels)
        except SiloError as err:
            raise SiloError(_clean(str(err), {str(path): path.name})) from None
        load = item.load

        def load_upload():
            try:
                return load()
            except SiloError as err:
                raise SiloError(_clean(str(err), {str(path): path.name})) from None

        return replace(item, source=path.name, load=load_upload), path

    def _asked(self, request: PageRequest, method: str) -> tuple[dict[str, Any], dict[str, float]]:
        """The settings and method options the page's fields set (blank ones are left to ``resolve``)."""
        settings: dict[str, Any] = {
            "steps": request.steps,
            "start_strength": request.start_strength,
            "seed": request.seed,
        }
        options: dict[str, float] = {}
        if request.step_size is not None:
            name = self.step_size_name(method)
            if name == "eta":
                settings["eta"] = request.step_size
            elif name is not None:
                options[name] = float(request.step_size)
        return {k: v for k, v in settings.items() if v is not None}, options

    def _setup(self, request: PageRequest, method: str):
        """The method's setup on the task, its settings resolved once per distinct request (cached)."""
        from silo.runs.restore import build_setup, load_run_task, settings_request

        settings, options = self._asked(request, method)
        key = (request.task, method, tuple(sorted(settings.items())), tuple(sorted(options.items())))
        if key not in self._setups:
            task = load_run_task(request.task, None, None)
            self._setups[key] = build_setup(self.models, task, method, settings_request(settings), options)
        return self._setups[key]

    @staticmethod
    def _measurement_files(request: PageRequest, task, simulate: bool, tmp: Path) -> tuple[str | None, str | None]:
        """The mask and kernel of a real measurement as files the runner reads (painted ones written to ``tmp``)."""
        deg = task.degradation
        given = request.mask is not None or request.mask_upload or request.kernel_upload
        if simulate:
            if given:
                raise SiloError(
                    "a mask or kernel describes a real measurement; in simulate mode the task draws its own"
                )
            return None, None
        mask = kernel = None
        if deg.uses_mask:
            if request.mask_upload:
                mask = request.mask_upload
            elif request.mask is not None:
                from PIL import Image

                painted = Image.fromarray(np.where(request.mask, 255, 0).astype(np.uint8), "L")
                size = _image_size(request.upload)
                if size is not None and painted.size != size:  # the editor showed the photo scaled
                    painted = painted.resize(size, Image.Resampling.NEAREST)
                mask_path = tmp / "painted-mask.png"
                painted.save(mask_path)
                mask = str(mask_path)
        elif request.mask is not None or request.mask_upload:
            raise SiloError(f"a mask is for inpainting tasks, not {task.name}")
        if deg.uses_kernel:
            if request.kernel_upload:
                kernel = request.kernel_upload
            elif deg.needs_kernel and request.kernel_seed is not None:
                kernel_path = tmp / f"kernel-seed{int(request.kernel_seed)}.npy"
                k = deg.sample_params((1, 3, 64, 64), [int(request.kernel_seed)])["kernel"][0]
                np.save(kernel_path, k.detach().cpu().double().numpy())
                kernel = str(kernel_path)
        elif request.kernel_upload:
            raise SiloError(f"a blur kernel is for blur tasks, not {task.name}")
        return mask, kernel


def _image_size(path: str | None) -> tuple[int, int] | None:
    """An uploaded image's ``(width, height)``, or None when it cannot be read (said later, when it is loaded)."""
    if not path:
        return None
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _clean(text: str, names: dict[str, str]) -> str:
    """A message naming uploaded files by their names (and a painted mask as such), not by the server's copies."""
    for path, name in names.items():
        text = text.replace(f"{name}: {path}: ", f"{name}: ").replace(path, name)
    return " ".join(text.split())


def metric_rows(log: dict[str, Any]) -> list[tuple[str, str]]:
    """``(metric, value)`` rows of a result's log (:data:`SHOWN_METRICS`); n/a where it could not be computed."""
    metrics = log.get("metrics", {})
    keys = [k for k in SHOWN_METRICS if k in metrics]
    rows = []
    for k in keys:
        v = metrics[k]
        if k.endswith("_note") or isinstance(v, (dict, list)):
            continue
        if v is None:
            rows.append((k, "n/a"))  # why: the log's "<metric>_note"
        else:
            rows.append((k, f"{v:.4g}" if isinstance(v, float) else str(v)))
    return rows


def setting_rows(log: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(setting, value, source)`` rows of a result's log: the settings as used and where each came from."""
    sources = log.get("setting_sources", {})
    rows = [(k, _show(v), sources.get(k, "")) for k, v in log.get("settings", {}).items() if k in sources]
    rows += [
        (f"method_options.{k}", _show(v), sources.get(f"method_options.{k}", ""))
        for k, v in log.get("method_options", {}).items()
    ]
    rows.append(("seed", str(log.get("seed")), sources.get("seed", "")))
    return rows


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
