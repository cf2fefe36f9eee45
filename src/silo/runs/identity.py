"""A result's identity: everything that changes its pixels, hashed into the key its file names carry.

Covered: the input's content (and, for a real measurement, its mask and kernel; for a simulation, the seed
of the degradation's random parameters), the task and its parameters, the method and its options, the
resolved settings, the prior's and the operator's weights (content hashes), the seed, the dtype, the device
type and padding. The same identity is a finished result (skipped on a rerun); another identity is a new
result beside the old one, never an overwrite. ``config_key`` leaves out the input and the seed: it is what
``silo summarize`` groups by.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from silo.provenance import fingerprint, prior_fingerprint, tensor_digest
from silo.samplers.problem import image_seed


@dataclass(frozen=True)
class Identity:
    config: dict[str, Any]
    input: dict[str, Any]
    seed: int
    key: str
    config_key: str
    image_seed: int

    def to_log(self) -> dict[str, Any]:
        return {"key": self.key, "config_key": self.config_key, "input": self.input, "config": self.config}


def _hash(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def config_identity(setup, options) -> dict[str, Any]:
    """Everything about a run that changes pixels, except the input and the seed."""
    task = setup.task.to_dict()
    task = {k: v for k, v in task.items() if k not in ("description", "source")}  # words and paths: no pixels
    # the naive estimate samples nothing: no sampling setting changes its pixels
    settings = {} if setup.method == "naive" else setup.resolved.settings.to_dict()
    prior = setup.prior
    operator = setup.operator
    return {
        "mode": "simulate" if options.simulate else "measurement",
        "task": task,
        "method": setup.method,
        "method_options": dict(sorted(setup.resolved.method_options.items())),
        "settings": settings,
        "prior": prior_fingerprint(prior),
        # configs that change pixels besides the weights: the noise schedule, the VAE's latent scaling
        "prior_config": {
            "scheduler": {k: v for k, v in dict(prior.scheduler.config).items() if not k.startswith("_")},
            "scaling_factor": prior.scaling_factor,
            "shift_factor": prior.shift_factor,
        },
        "operator": fingerprint(operator),
        "operator_config": None
        if operator is None
        else {k: v for k, v in dict(operator.config).items() if not k.startswith("_")},
        "dtype": options.dtype,
        "device_type": setup.prior.device.type,
        "pad": bool(options.pad),
    }


def identify(setup, seed: int, tensor: Tensor, params: dict[str, Tensor], item, options) -> Identity:
    config = config_identity(setup, options)
    if options.simulate:
        random = setup.task.degradation.random_params
        inputs = {"image": tensor_digest(tensor), "param_seed": item.param_seed if random else None}
    else:
        inputs = {"image": tensor_digest(tensor), "params": {k: tensor_digest(v) for k, v in sorted(params.items())}}
    key = _hash({"config": config, "input": inputs, "seed": seed})
    config_key = _hash(config)
    # the image's noise streams: its content and the run's seed (not a kernel or mask: a method that ignores
    # them gives the same result for the same measurement)
    own = image_seed(seed, _hash({k: v for k, v in inputs.items() if k != "params"}))
    return Identity(config, inputs, seed, key, config_key, own)
