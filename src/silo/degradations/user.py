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
import sys
from pathlib import Path
from typing import Any, Callable

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
        raise SiloError(f"degradation {spec}: cannot import module {name!r} ({err}); give a .py path or an importable module") from None
    except Exception as err:
        raise SiloError(f"degradation {spec}: importing {name} failed: {type(err).__name__}: {err}") from None


def load_callable(spec: str) -> Callable[[Tensor], Any]:
    """``module:callable`` -> the function, or an instance of the class (built without arguments)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise SiloError(f"degradation {spec!r}: expected module:callable, e.g. my_degradation.py:blur")
    obj: Any = _import_module(module_name, spec)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SiloError(f"degradation {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except TypeError as err:
            raise SiloError(f"degradation {spec}: class {attr} must be constructible without arguments ({err})") from None
    if not callable(obj):
        raise SiloError(f"degradation {spec}: {attr} is not callable")
    return obj


class UserDegradation(Degradation):
    """``A = fn`` on [-1, 1] images; a clean integer down-scale is treated like super-resolution."""

    # nothing is known about ``fn`` beyond its output size, so claim no linearity, gradient or parameters
    linear = False
    differentiable = False
    random_params = False

    def __init__(self, fn: Callable[[Tensor], Any], spec: str, scale: int = 1, noise_sigma: float = 0.0) -> None:
        super().__init__(noise_sigma, callable=spec, scale=int(scale))
        self.fn, self.spec, self.scale = fn, spec, int(scale)
        self.name = f"user:{spec}"

    def A(self, x: Tensor, params: Params | None = None) -> Tensor:  # noqa: N802
        y = self.fn(x)
        if not torch.is_tensor(y):
            raise SiloError(f"degradation {self.spec} returned {type(y).__name__}, not a tensor")
        return y.to(x.dtype)

    def check_size(self, height: int, width: int) -> None:
        if height % self.scale or width % self.scale:
            raise SiloError(f"image size {width}x{height} is not divisible by {self.spec}'s down-scale factor {self.scale}")

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
    x = (torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1).to(device)
    try:
        with torch.no_grad():
            y = fn(x)
    except Exception as err:  # anything the user's code raises is reported in one line
        raise SiloError(f"degradation {spec} failed on a 2 x 3 x {size} x {size} probe batch: {type(err).__name__}: {err}") from None
    if not torch.is_tensor(y):
        raise SiloError(f"degradation {spec} returned {type(y).__name__}, not a torch tensor")
    if y.dim() != 4 or tuple(y.shape[:2]) != (2, 3):
        raise SiloError(f"degradation {spec} turned a 2 x 3 x {size} x {size} batch into {' x '.join(map(str, y.shape))}: it must keep the batch and 3 channels")
    if not torch.isfinite(y).all():
        raise SiloError(f"degradation {spec} returned NaN or Inf on a probe batch of smooth images in [-1, 1]")
    h, w = y.shape[-2:]
    if (h, w) == (size, size):
        return 1
    if h == w and h > 0 and size % h == 0:
        return size // h
    raise SiloError(f"degradation {spec} maps {size}x{size} images to {w}x{h}: only the same size or a clean integer down-scale is supported")


def load_user_degradation(spec: str, noise_sigma: float = 0.0, probe_size: int = 64,
                          device: str | torch.device = "cpu") -> Degradation:
    """Import, validate on a probe batch and wrap ``module:callable``; a ``Degradation`` instance is used as is."""
    fn = load_callable(spec)
    if isinstance(fn, Degradation):
        fn.noise_sigma = float(noise_sigma)
        return fn
    scale = probe_scale(fn, spec, probe_size, device)
    return UserDegradation(fn, spec, scale, noise_sigma)


def user_task(spec: str, noise_sigma: float = 0.0, probe_size: int = 64, eta: float = 0.5) -> Task:
    """A :class:`Task` for ``silo.pipeline.restore`` with a user degradation (what a task YAML gives for shipped ones)."""
    degradation = load_user_degradation(spec, noise_sigma, probe_size)
    return Task(name=f"user-{Path(spec.rpartition(':')[0]).stem}", description=f"user degradation {spec}",
                degradation=degradation, sampling={"eta": eta, "clamp_measurement": False}, source=spec)
