"""A user's own degradation, given as ``module:callable``, wrapped as a :class:`Degradation`.

SILO trains an operator for any ``A`` that can be computed on images, differentiable or not, so users
bring ``A`` as plain Python: a function ``f(x) -> y`` or a class instantiated without arguments, on
``B x 3 x H x W`` tensors in [-1, 1]. The noise model stays silo's. The callable is checked once on a
probe batch, so a broken ``A`` fails in seconds with one line instead of after hours of training.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from silo.degradations.base import Degradation, Params
from silo.degradations.resize import imresize
from silo.degradations.tasks import Task
from silo.errors import SiloError


def _import_module(name: str, spec: str):
    """A ``.py`` path (imported under a name derived from its path) or an importable module name."""
    path = Path(name).expanduser()
    if name.endswith(".py") or path.is_file():
        if not path.is_file():
            raise SiloError(f"degradation {spec}: no such file {path}")
        resolved = path.resolve()
        mod_name = f"silo_user_degradation_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        module_spec = importlib.util.spec_from_file_location(mod_name, resolved)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:  # the user's module can raise anything while importing
            del sys.modules[mod_name]
            raise SiloError(f"degradation {spec}: importing {path} failed: {type(err).__name__}: {err}") from None
        return module
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise SiloError(
            f"degradation {spec}: cannot import module {name!r} ({err}); give a .py path or an importable module"
        ) from None
    except Exception as err:
        raise SiloError(f"degradation {spec}: importing {name} failed: {type(err).__name__}: {err}") from None


def split_spec(spec: str) -> tuple[str, str]:
    """``module:callable`` -> ``(module, callable)``; the last colon separates them (a Windows path keeps its own)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise SiloError(f"degradation {spec!r}: expected module:callable, e.g. my_degradation.py:blur")
    return module_name, attr


def _slug(text: str) -> str:
    """A name part safe in file names and table rows: letters, digits, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-") or "x"


def task_name(spec: str) -> str:
    """The task name of ``module:callable``: ``user-FILE-CALLABLE``, one per function, whatever the path.

    Result names, ``silo summarize`` rows and operator cards carry it, so two functions of one file are two
    tasks, and the same file reached by another path is the same task."""
    module_name, attr = split_spec(spec)
    stem = Path(module_name).stem if module_name.endswith(".py") else module_name.rpartition(".")[2]
    return f"user-{_slug(stem)}-{_slug(attr)}"


def source_digest(obj: Any, module: Any, spec: str) -> str:
    """SHA-256 of the callable's source (the class's for an instance), else of its module's file, else of ``spec``.

    A resumed training and a restore compare this, not the path: the same function from another path matches,
    an edited one does not."""
    target = obj if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj) else type(obj)
    try:
        text = inspect.getsource(target)
    except (OSError, TypeError):
        file = getattr(module, "__file__", None)
        try:
            text = Path(file).read_text(errors="replace") if file else spec
        except OSError:
            text = spec
    return hashlib.sha256(text.encode()).hexdigest()


def load_callable(spec: str) -> Callable[[Tensor], Any]:
    """``module:callable`` -> the function, or an instance of the class (built without arguments);
    :func:`load_callable_with_digest` also gives the hash of its source."""
    return load_callable_with_digest(spec)[0]


def load_callable_with_digest(spec: str) -> tuple[Callable[[Tensor], Any], str]:
    """``(callable, sha256 of its source)`` for ``module:callable``."""
    module_name, attr = split_spec(spec)
    module: Any = _import_module(module_name, spec)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SiloError(f"degradation {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    digest = source_digest(obj, module, spec)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except TypeError as err:
            raise SiloError(
                f"degradation {spec}: class {attr} must be constructible without arguments ({err})"
            ) from None
    if not callable(obj):
        raise SiloError(f"degradation {spec}: {attr} is not callable")
    return obj, digest


class UserDegradation(Degradation):
    """``A = fn`` on [-1, 1] images; a clean integer down-scale is treated like super-resolution."""

    # nothing is known about ``fn`` beyond its output size, so claim no linearity, gradient or parameters
    linear = False
    differentiable = False
    random_params = False

    def __init__(
        self,
        fn: Callable[[Tensor], Any],
        spec: str,
        scale: int = 1,
        noise_sigma: float = 0.0,
        source_sha256: str | None = None,
    ) -> None:
        # the settings (a result's identity, a training's) name the function and hash its source, not its path
        # (a bare label instead of module:callable, from Python, names itself)
        module_name, _, attr = spec.rpartition(":")
        super().__init__(noise_sigma, callable=attr, scale=int(scale), source_sha256=source_sha256)
        self.fn, self.spec, self.scale = fn, spec, int(scale)
        self.source_sha256 = source_sha256
        self.name = task_name(spec) if module_name else f"user-{_slug(spec)}"

    def A(self, x: Tensor, params: Params | None = None) -> Tensor:  # noqa: N802
        y = self.fn(x)
        if not torch.is_tensor(y):
            raise SiloError(f"degradation {self.spec} returned {type(y).__name__}, not a tensor")
        return y.to(x.dtype)

    def check_size(self, height: int, width: int) -> None:
        if height % self.scale or width % self.scale:
            raise SiloError(
                f"image size {width}x{height} is not divisible by {self.spec}'s down-scale factor {self.scale}"
            )

    def measurement_shape(self, height: int, width: int) -> tuple[int, int]:
        return height // self.scale, width // self.scale

    def image_shape(self, height: int, width: int) -> tuple[int, int]:
        return height * self.scale, width * self.scale

    def to_image_size(self, y: Tensor) -> Tensor:
        if self.scale == 1:
            return y
        return imresize(y, (y.shape[-2] * self.scale, y.shape[-1] * self.scale))


def probe_scale(fn: Callable[[Tensor], Any], spec: str, size: int = 64, device: str | torch.device = "cpu") -> int:
    """Run ``fn`` on two smooth random images; return 1 (same size) or the integer down-scale factor."""
    g = torch.Generator().manual_seed(0)  # smooth: low-frequency noise, up-sampled
    small = torch.rand(2, 3, size // 8, size // 8, generator=g)
    x = (torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1).to(
        device
    )
    try:
        with torch.no_grad():
            y = fn(x)
    except Exception as err:  # anything the user's code raises is reported in one line
        raise SiloError(
            f"degradation {spec} failed on a 2 x 3 x {size} x {size} probe batch: {type(err).__name__}: {err}"
        ) from None
    if not torch.is_tensor(y):
        raise SiloError(f"degradation {spec} returned {type(y).__name__}, not a torch tensor")
    if y.dim() != 4 or tuple(y.shape[:2]) != (2, 3):
        raise SiloError(
            f"degradation {spec} turned a 2 x 3 x {size} x {size} batch into {' x '.join(map(str, y.shape))}: "
            "it must keep the batch and 3 channels"
        )
    if not torch.isfinite(y).all():
        raise SiloError(f"degradation {spec} returned NaN or Inf on a probe batch of smooth images in [-1, 1]")
    h, w = y.shape[-2:]
    if (h, w) == (size, size):
        return 1
    if h == w and h > 0 and size % h == 0:
        return size // h
    raise SiloError(
        f"degradation {spec} maps {size}x{size} images to {w}x{h}: "
        "only the same size or a clean integer down-scale is supported"
    )


def load_user_degradation(
    spec: str, noise_sigma: float = 0.0, probe_size: int = 64, device: str | torch.device = "cpu"
) -> Degradation:
    """Import, validate on a probe batch and wrap ``module:callable``; a ``Degradation`` instance is used as is.
    Either way the result carries ``source_sha256``, the hash of the callable's source."""
    fn, digest = load_callable_with_digest(spec)
    if isinstance(fn, Degradation):
        fn.noise_sigma = float(noise_sigma)
        fn.source_sha256 = digest
        return fn
    scale = probe_scale(fn, spec, probe_size, device)
    return UserDegradation(fn, spec, scale, noise_sigma, digest)


def user_task(spec: str, noise_sigma: float = 0.0, probe_size: int = 64, eta: float = 0.5) -> Task:
    """A :class:`Task` for ``silo.pipeline.restore`` with a user degradation (what a task YAML gives for shipped
    ones), named ``user-FILE-CALLABLE`` (:func:`task_name`)."""
    degradation = load_user_degradation(spec, noise_sigma, probe_size)
    return Task(
        name=task_name(spec),
        description=f"user degradation {spec}",
        degradation=degradation,
        sampling={"eta": eta, "clamp_measurement": False},
        source=spec,
    )


def operator_mismatch(card: Any, task: Task, operator: str) -> str | None:
    """Why an operator trained for one degradation should not restore another, or None.

    ``card`` is the operator's :class:`~silo.cards.OperatorCard`. Checked where either side is a user
    degradation: the task names differ (``user-FILE-CALLABLE`` vs a shipped task, or another function), or the
    names agree but the function's source changed since training (its SHA-256 in the card)."""
    trained_for = getattr(card, "task", None)
    user_run = isinstance(task.degradation, UserDegradation) or task.name.startswith("user-")
    user_card = isinstance(trained_for, str) and trained_for.startswith("user-")
    if not trained_for or not (user_run or user_card):
        return None
    spec = getattr(card, "degradation", None)
    hint = f"--degradation {spec}" if user_card and spec else f"--task {trained_for}"
    if trained_for != task.name:
        return (
            f"operator {operator} was trained for {trained_for}, not {task.name} (its model_card.json): pass "
            f"{hint}, another --operator, or --allow-operator-mismatch to use it anyway"
        )
    then, now = getattr(card, "degradation_source_sha256", None), getattr(task.degradation, "source_sha256", None)
    if then and now and then != now:
        return (
            f"operator {operator} was trained for {trained_for} with another version of its function (source "
            f"sha256 {then[:12]} then, {now[:12]} now): retrain it, or pass --allow-operator-mismatch to use it "
            "anyway"
        )
    return None
