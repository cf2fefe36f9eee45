"""SILO: solving inverse problems with latent diffusion priors and learned latent operators.

Images are tensors in [-1, 1] shaped ``B x C x H x W``. Measurement noise levels are given on the
[0, 1] image scale everywhere in this library (``sigma=0.01`` means a standard deviation of 1% of the
image range); see :mod:`silo.degradations.noise` for the one place that converts.
"""

from silo.errors import SiloError

__version__ = "0.1.0"

__all__ = ["SiloError", "__version__"]
