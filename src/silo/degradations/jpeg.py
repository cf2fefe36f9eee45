"""JPEG compression with a real codec (Pillow's libjpeg).

The codec is not differentiable; methods that need a gradient of ``A`` get a straight-through estimate
(identity Jacobian). SILO itself never differentiates ``A``: that is the point of a learned latent operator.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from silo.degradations.base import Degradation, Params
from silo.errors import SiloError


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """Encode and decode each ``[-1, 1]`` RGB image as 8-bit JPEG at ``quality``."""
    out = []
    for img in x.detach().float().cpu():
        arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        mode = "RGB" if arr.shape[2] == 3 else "L"
        buf = io.BytesIO()
        Image.fromarray(arr if mode == "RGB" else arr[..., 0], mode=mode).save(buf, format="JPEG", quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode), dtype=np.float32)
        if dec.ndim == 2:
            dec = dec[..., None]
        out.append(torch.from_numpy(dec).permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(out).to(x)


class JPEG(Degradation):
    name = "jpeg"
    linear = False
    differentiable = False
    random_params = False

    def __init__(self, quality: int = 10, noise_sigma: float = 0.0) -> None:
        if not 1 <= int(quality) <= 95:
            raise SiloError(f"JPEG quality must be in 1..95, got {quality}")
        super().__init__(noise_sigma, quality=int(quality))
        self.quality = int(quality)

    def A(self, x: Tensor, params: Params | None = None) -> Tensor:  # noqa: N802
        compressed = jpeg_roundtrip(x, self.quality)
        # straight-through: value of the codec, gradient of the identity
        return x + (compressed - x).detach()
