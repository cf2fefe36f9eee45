"""Samplers: plain functions with one signature,
``method(prior, problem, settings, operator=None, callback=None, show_progress=True) -> latents``.

A new method is one new function registered in :data:`SAMPLERS`.
"""

from silo.samplers.problem import Problem, SamplerSettings, encode_measurement
from silo.samplers.silo import silo
from silo.samplers.latent_dps import latent_dps
from silo.samplers.psld import psld
from silo.samplers.silo_x0 import silo_x0

SAMPLERS = {"silo": silo}
SAMPLERS["silo_x0"] = silo_x0  # x0-space SILO: one UNet forward per step
SAMPLERS["ldps"] = latent_dps  # Latent-DPS: guidance through the decoder
SAMPLERS["psld"] = psld  # PSLD: LDPS plus gluing, linear tasks only

__all__ = ["Problem", "SAMPLERS", "SamplerSettings", "encode_measurement", "silo"]
