"""SILO: solving inverse problems with latent diffusion priors and learned latent operators.

Images are tensors in [-1, 1] shaped ``B x C x H x W``. Measurement noise levels are given on the
[0, 1] image scale everywhere in this library (``sigma=0.01`` means a standard deviation of 1% of the
image range); see :mod:`silo.degradations.noise` for the one place that converts.
"""

from typing import TYPE_CHECKING, Any

from silo._version import __version__
from silo.errors import SiloError

if TYPE_CHECKING:  # the same names for type checkers and editors; at run time each loads on first use
    from silo.api import Result, restore
    from silo.degradations.tasks import load_task
    from silo.operators import load_operator
    from silo.pipelines import SiloPipeline, SiloPipelineOutput
    from silo.priors.prior import Prior
    from silo.samplers.registry import SAMPLERS, register_sampler
    from silo.settings import SamplerSettings, resolve

#: the public names, imported on first use so that ``import silo`` (and ``silo --help``) stays light
_LAZY = {
    "restore": ("silo.api", "restore"),
    "Result": ("silo.api", "Result"),
    "resolve": ("silo.settings", "resolve"),
    "SamplerSettings": ("silo.settings", "SamplerSettings"),
    "SAMPLERS": ("silo.samplers.registry", "SAMPLERS"),
    "register_sampler": ("silo.samplers.registry", "register_sampler"),
    "Prior": ("silo.priors.prior", "Prior"),
    "load_task": ("silo.degradations.tasks", "load_task"),
    "load_operator": ("silo.operators", "load_operator"),
    "SiloPipeline": ("silo.pipelines", "SiloPipeline"),
    "SiloPipelineOutput": ("silo.pipelines", "SiloPipelineOutput"),
}

__all__ = [  # written out (the names of _LAZY and the two loaded at once) so that linters and editors read it
    "SiloError",
    "__version__",
    "restore",
    "Result",
    "resolve",
    "SamplerSettings",
    "SAMPLERS",
    "register_sampler",
    "Prior",
    "load_task",
    "load_operator",
    "SiloPipeline",
    "SiloPipelineOutput",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'silo' has no attribute {name!r}")
