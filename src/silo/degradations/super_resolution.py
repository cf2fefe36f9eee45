"""Super-resolution: anti-aliased bicubic down-sampling with MATLAB ``imresize`` semantics."""

from __future__ import annotations

from torch import Tensor

from silo.degradations.base import Degradation, Params
from silo.degradations.resize import imresize
from silo.errors import SiloError


class SuperResolution(Degradation):
    name = "super_resolution"
    random_params = False

    def __init__(self, scale: int = 4, noise_sigma: float = 0.0) -> None:
        if int(scale) != scale or scale < 1:
            raise SiloError(f"super-resolution scale must be a positive integer, got {scale}")
        super().__init__(noise_sigma, scale=int(scale))
        self.scale = int(scale)

    def check_size(self, height: int, width: int) -> None:
        if height % self.scale or width % self.scale:
            raise SiloError(f"image size {width}x{height} is not divisible by the super-resolution factor {self.scale}")

    def A(self, x: Tensor, params: Params | None = None) -> Tensor:  # noqa: N802
        h, w = x.shape[-2:]
        self.check_size(h, w)
        return imresize(x, (h // self.scale, w // self.scale))

    def measurement_shape(self, height: int, width: int) -> tuple[int, int]:
        return height // self.scale, width // self.scale

    def image_shape(self, height: int, width: int) -> tuple[int, int]:
        return height * self.scale, width * self.scale

    def to_image_size(self, y: Tensor) -> Tensor:
        h, w = y.shape[-2:]
        return imresize(y, (h * self.scale, w * self.scale))
