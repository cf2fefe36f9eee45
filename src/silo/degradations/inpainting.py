"""Box inpainting: a box of pixels is zeroed (mid-grey in [-1, 1]) in the centre or at a seeded random place.

Box size and margin are fractions of the image side so they scale with the image
(the reference: a 256 px box in a 512 px image, 16 px margin for random boxes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from silo.degradations.base import Degradation, Params
from silo.errors import SiloError


class Inpainting(Degradation):
    name = "inpainting"
    uses_mask = True

    def __init__(
        self, box: str = "center", box_fraction: float = 0.5, margin_fraction: float = 1 / 32, noise_sigma: float = 0.0
    ) -> None:
        if box not in ("center", "random"):
            raise SiloError(f"inpainting box must be 'center' or 'random', got {box!r}")
        if not 0 < box_fraction < 1 or not 0 <= margin_fraction < (1 - box_fraction) / 2 + 1e-9:
            raise SiloError(f"bad inpainting box_fraction={box_fraction} / margin_fraction={margin_fraction}")
        super().__init__(noise_sigma, box=box, box_fraction=float(box_fraction), margin_fraction=float(margin_fraction))
        self.box = box
        self.box_fraction = float(box_fraction)
        self.margin_fraction = float(margin_fraction)

    @property
    def random_params(self) -> bool:
        """A random box is drawn per image; a centre box is the same for every seed."""
        return self.box == "random"

    def box_size(self, height: int, width: int) -> tuple[int, int]:
        return max(1, round(height * self.box_fraction)), max(1, round(width * self.box_fraction))

    def sample_params(self, shape: tuple[int, ...], seeds: list[int]) -> Params:
        b, h, w = shape[0], shape[-2], shape[-1]
        bh, bw = self.box_size(h, w)
        masks = torch.ones(b, 1, h, w)
        for i, seed in enumerate(seeds):
            if self.box == "center":
                top, left = (h - bh) // 2, (w - bw) // 2
            else:
                g = torch.Generator().manual_seed(int(seed))
                mh, mw = round(h * self.margin_fraction), round(w * self.margin_fraction)
                top = int(torch.randint(mh, max(mh, h - mh - bh) + 1, (), generator=g))
                left = int(torch.randint(mw, max(mw, w - mw - bw) + 1, (), generator=g))
            masks[i, :, top : top + bh, left : left + bw] = 0
        return {"mask": masks}

    def A(self, x: Tensor, params: Params | None = None) -> Tensor:  # noqa: N802
        if not params or "mask" not in params:
            params = self.sample_params(x.shape, [0] * x.shape[0])
        mask = params["mask"].to(x)
        if mask.shape[-2:] != x.shape[-2:]:
            raise SiloError(f"mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {x.shape[-1]}x{x.shape[-2]}")
        return x * mask

    def mask(self, params: Params | None) -> Tensor | None:
        return None if not params else params.get("mask")
