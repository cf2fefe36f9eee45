"""Random crops with horizontal flips from a list of images or latent maps, with a resumable RNG."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class CropSampler:
    """Draws ``batch x C x size x size`` float crops; an image is picked uniformly, then a position.

    Images are ``H x W x 3`` uint8 (returned scaled to [-1, 1]) or ``C x H x W`` float tensors
    (latents, returned as they are). Picking images uniformly over every (photo, scale) entry
    weights the detailed down-scaled copies as much as the smooth native-resolution ones.
    """

    def __init__(self, images: Sequence, size: int, seed: int = 0, flip: bool = True) -> None:
        self.images = [im for im in images if min(self._hw(im)) >= size]
        if not self.images:
            raise ValueError(f"no image is at least {size} px on each side")
        self.size, self.flip = size, flip
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def _hw(im) -> tuple[int, int]:
        return (im.shape[0], im.shape[1]) if isinstance(im, np.ndarray) else (im.shape[-2], im.shape[-1])

    def sample(self, batch: int):
        import torch

        out = []
        for _ in range(batch):
            im = self.images[int(self.rng.integers(len(self.images)))]
            h, w = self._hw(im)
            y = int(self.rng.integers(0, h - self.size + 1))
            x = int(self.rng.integers(0, w - self.size + 1))
            flip = self.flip and bool(self.rng.integers(2))
            if isinstance(im, np.ndarray):
                crop = torch.from_numpy(np.ascontiguousarray(im[y : y + self.size, x : x + self.size]))
                crop = crop.permute(2, 0, 1).float().div(127.5).sub(1.0)
            else:
                crop = im[:, y : y + self.size, x : x + self.size].float()
            out.append(crop.flip(-1) if flip else crop)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
