"""Image-quality metrics on images in [-1, 1], evaluated on the [0, 1] scale, per image of a batch.

SSIM and MS-SSIM come from torchmetrics. LPIPS needs pretrained network weights; when they are not
available locally it is reported as unavailable with the reason, never approximated.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor


def _01(x: Tensor) -> Tensor:
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)


def psnr(a: Tensor, b: Tensor) -> list[float]:
    """Per-image PSNR in dB with a peak of 1 on the [0, 1] scale."""
    mse = (_01(a) - _01(b)).pow(2).flatten(1).mean(1)
    return [float("inf") if m == 0 else -10 * math.log10(float(m)) for m in mse]


def rgb_to_y(x01: Tensor) -> Tensor:
    """ITU-R BT.601 luma as MATLAB's ``rgb2ycbcr`` computes it, on [0, 1]."""
    r, g, b = x01[:, 0], x01[:, 1], x01[:, 2]
    return ((65.481 * r + 128.553 * g + 24.966 * b + 16.0) / 255.0)[:, None]


def psnr_y(a: Tensor, b: Tensor) -> list[float]:
    mse = (rgb_to_y(_01(a)) - rgb_to_y(_01(b))).pow(2).flatten(1).mean(1)
    return [float("inf") if m == 0 else -10 * math.log10(float(m)) for m in mse]


def ssim(a: Tensor, b: Tensor) -> list[float | None]:
    """Per-image SSIM (11x11 Gaussian window); None for images under 11 px a side."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if min(a.shape[-2:]) < 11:  # the 11x11 Gaussian window does not fit
        return [None] * a.shape[0]
    return [
        float(structural_similarity_index_measure(_01(a[i : i + 1]), _01(b[i : i + 1]), data_range=1.0))
        for i in range(a.shape[0])
    ]


def ms_ssim(a: Tensor, b: Tensor) -> list[float | None]:
    """MS-SSIM with the standard 5 scales; None for images too small for them (sides under 161 px)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    if min(a.shape[-2:]) <= 160:
        return [None] * a.shape[0]
    return [
        float(multiscale_structural_similarity_index_measure(_01(a[i : i + 1]), _01(b[i : i + 1]), data_range=1.0))
        for i in range(a.shape[0])
    ]


def region_metrics(
    output: Tensor, reference: Tensor, mask: Tensor, measurement: Tensor | None = None
) -> list[dict[str, float | None]]:
    """Inpainting's two regions apart: PSNR and SSIM over the known pixels (``mask`` 1) and over the hole, and
    with ``measurement`` the known pixels' PSNR against the measurement itself (infinite when kept exactly).
    Region SSIM is the mean of the SSIM map (11x11 Gaussian window) over the region's pixels."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _01(output), _01(reference)
    known = (mask.detach().float().cpu() > 0.5).expand_as(a)
    rows: list[dict[str, float | None]] = []
    for i in range(a.shape[0]):
        row: dict[str, float | None] = {}
        smap = None
        if min(a.shape[-2:]) >= 11:
            _, smap = structural_similarity_index_measure(
                a[i : i + 1], b[i : i + 1], data_range=1.0, return_full_image=True
            )
        for name, region in (("known", known[i]), ("hole", ~known[i])):
            if not region.any():
                row[f"psnr_{name}"] = row[f"ssim_{name}"] = None
                continue
            mse = float((a[i] - b[i])[region].pow(2).mean())
            row[f"psnr_{name}"] = float("inf") if mse == 0 else -10 * math.log10(mse)
            row[f"ssim_{name}"] = None if smap is None else float(smap[0][region].mean())
        if measurement is not None and known[i].any():
            mse = float((a[i] - _01(measurement)[i])[known[i]].pow(2).mean())
            row["psnr_known_vs_measurement"] = float("inf") if mse == 0 else -10 * math.log10(mse)
        rows.append(row)
    return rows


@lru_cache(maxsize=2)
def _lpips_model(net: str):
    """The LPIPS network if its weights are available locally, else a string saying why not."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=False)
    except Exception as err:  # missing torchvision, missing weights offline, ...: report, never fake
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"unavailable: {text[:200]}"


def lpips(a: Tensor, b: Tensor, net: str = "alex") -> tuple[list[float | None], str | None]:
    model = _lpips_model(net)
    if isinstance(model, str):
        return [None] * a.shape[0], model
    with torch.no_grad():
        vals = [
            float(model(a[i : i + 1].float().cpu().clamp(-1, 1), b[i : i + 1].float().cpu().clamp(-1, 1)))
            for i in range(a.shape[0])
        ]
    return vals, None


def restoration_metrics(
    output: Tensor,
    reference: Tensor,
    a_output: Tensor | None = None,
    a_reference: Tensor | None = None,
    with_lpips: bool = True,
    mask: Tensor | None = None,
    measurement: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Per-image metrics of ``output`` against ``reference``; consistency metrics compare ``A(output)``
    with the noise-free ``A(x)``; with an inpainting ``mask``, also each region's (:func:`region_metrics`)."""
    rows: list[dict[str, Any]] = [{} for _ in range(output.shape[0])]
    columns: dict[str, list] = {
        "psnr": psnr(output, reference),
        "ssim": ssim(output, reference),
        "ms_ssim": ms_ssim(output, reference),
        "psnr_y": psnr_y(output, reference),
    }
    if a_output is not None and a_reference is not None:
        columns["consistency_psnr"] = psnr(a_output, a_reference)
        columns["consistency_psnr_y"] = psnr_y(a_output, a_reference)
    if with_lpips:
        for net in ("alex", "vgg"):
            vals, why = lpips(output, reference, net)
            columns[f"lpips_{net}"] = vals
            if why:
                for row in rows:
                    row[f"lpips_{net}_note"] = why
    for name, vals in columns.items():
        for row, v in zip(rows, vals):
            row[name] = v
    if mask is not None:
        for row, regions in zip(rows, region_metrics(output, reference, mask, measurement)):
            row.update(regions)
    return rows
