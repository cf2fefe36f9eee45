"""The inverse problem every sampler solves: the measurement, its degradation and parameters, per-image seeds."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from silo.degradations.base import Degradation, Params, generators_for


@dataclass
class Problem:
    """An inverse problem for a batch: ``y = A(x) + n`` with ``A = degradation`` and its ``params``.

    ``seeds`` holds one seed per image; every random draw for image ``i`` (initial latent, encoder sample,
    scheduler noise) comes from a named stream of ``seeds[i]``, so batches equal single runs. The runner
    derives each image's seed from the run's seed and the image's content (:func:`image_seed`), so two
    images never share a noise field while a rerun reproduces exactly.
    """

    degradation: Degradation
    y: Tensor
    params: Params = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if len(self.seeds) != self.y.shape[0]:
            raise ValueError(f"{len(self.seeds)} seeds for a batch of {self.y.shape[0]} measurements")
        if self.image_size is None:
            self.image_size = self.degradation.image_shape(*self.y.shape[-2:])

    @property
    def batch(self) -> int:
        return self.y.shape[0]

    @property
    def noise_sigma(self) -> float:
        return self.degradation.noise_sigma

    @property
    def mask(self) -> Tensor | None:
        return self.degradation.mask(self.params)

    @property
    def blur_kernel(self) -> Tensor | None:
        return self.degradation.blur_kernel(self.params)

    def generators(self, stream: str, device: str | torch.device = "cpu") -> list[torch.Generator]:
        """Independent per-image generators for one named random stream ("init", "encode", "step", ...)."""
        from silo.samplers.context import stream_seed

        return generators_for([stream_seed(s, stream) for s in self.seeds], device)


def image_seed(seed: int, image_key: str) -> int:
    """The seed of one image's random streams: the run's seed and the image's identity together."""
    import hashlib

    digest = hashlib.blake2b(f"{int(seed)}:{image_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**63)
