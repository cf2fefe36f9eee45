"""Samplers: plain functions with one signature,
``method(prior, problem, settings, operator=None, callback=None, show_progress=True) -> latents``.

A new method is one new function registered in :data:`SAMPLERS`.
"""

from silo.samplers.problem import Problem, SamplerSettings, encode_measurement
from silo.samplers.silo import silo

SAMPLERS = {"silo": silo}

__all__ = ["Problem", "SAMPLERS", "SamplerSettings", "encode_measurement", "silo"]
