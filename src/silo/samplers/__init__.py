"""Samplers: each method is a plain function ``fn(ctx, operator=None, callback=None, *, <step sizes>) -> z0``
over a shared :class:`~silo.samplers.context.SamplingContext`, and one entry in :data:`SAMPLERS` saying
what it needs. A registered spec is called ``spec(prior, problem, settings, operator=..., callback=...)``.
"""

from silo.samplers.context import SamplingContext, encode_measurement
from silo.samplers.daps import daps, silo_daps
from silo.samplers.latent_dps import latent_dps
from silo.samplers.problem import Problem, SamplerSettings, image_seed
from silo.samplers.psld import psld
from silo.samplers.registry import NAIVE, SAMPLERS, SamplerSpec, method_names, refusal, register_sampler
from silo.samplers.resample import resample
from silo.samplers.silo import silo
from silo.samplers.silo_x0 import silo_x0

register_sampler(
    "silo",
    silo,
    "SILO",
    needs_operator=True,
    operator_inputs=frozenset({"z0", "features"}),
    paired_reference="unet_forward_backward",
)
register_sampler(
    "silo_x0",
    silo_x0,
    "x0-space SILO",
    needs_operator=True,
    operator_inputs=frozenset({"z0"}),
    paired_reference="unet_forward",
)
register_sampler(
    "ldps",
    latent_dps,
    "Latent-DPS",
    needs_differentiable=False,
    paired_reference="unet_forward_backward",
    needs_decoder_each_step=True,
)
register_sampler(
    "psld", psld, "PSLD", needs_linear=True, paired_reference="unet_forward_backward", needs_decoder_each_step=True
)
register_sampler(
    "resample", resample, "ReSample", needs_decoder_each_step=True, paired_reference="unet_forward_backward"
)
register_sampler("daps", daps, "Latent-DAPS", needs_decoder_each_step=True, paired_reference="unet_forward")
register_sampler(
    "silo_daps",
    silo_daps,
    "annealed SILO",
    needs_operator=True,
    operator_inputs=frozenset({"z0"}),
    paired_reference="unet_forward",
)

__all__ = [
    "NAIVE",
    "Problem",
    "SAMPLERS",
    "SamplerSettings",
    "SamplerSpec",
    "SamplingContext",
    "encode_measurement",
    "image_seed",
    "method_names",
    "refusal",
    "register_sampler",
]
