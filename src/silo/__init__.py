"""SILO: solving inverse problems with latent diffusion priors and learned latent operators.

Images are tensors in [-1, 1] shaped ``B x C x H x W``. Measurement noise levels are given on the
[0, 1] image scale everywhere in this library (``sigma=0.01`` means a standard deviation of 1% of the
image range); see :mod:`silo.degradations.noise` for the one place that converts.
"""

from silo.errors import SiloError

__version__ = "0.1.0"

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
}

__all__ = ["SiloError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'silo' has no attribute {name!r}")
