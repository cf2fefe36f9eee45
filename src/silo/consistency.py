"""What the restored image owes the measurement once it is decoded: inpainting's known pixels, and an
optional data-consistency step for every task.

**Known pixels.** The latent round trip (encode, sample, decode) alters every pixel, including those the
measurement gives. :func:`keep_known_pixels` puts the measurement's known pixels back exactly and hides the
seam by moving the *hole* side, not the known side: the residual ``y - output`` on the known pixels is
carried into the hole ring by ring (each new ring takes the mean residual of its already-filled
neighbours) and faded out linearly over ``feather`` px. So every known pixel is the measurement's own
(PSNR against it is infinite), and at the border the filled-in content starts where the known content ends,
with no step. Feathering the mask instead (a blend ``m * y + (1 - m) * output`` with a soft ``m``) would
alter known pixels near the border and leave the hole's offset at the seam.

**Data consistency.** :func:`data_consistency` takes a few steepest-descent steps on ``0.5 ||A(x) - y||^2``
from the decoded output, each with its exact line-search step size for a linear ``A`` (JPEG, whose
gradient is its codec's straight-through one: a unit step), clamped to [-1, 1]. Off by default: on
silo-tiny's held-out crops it helped Gaussian blur and sr4 and hurt JPEG (``docs/results.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from silo.degradations.base import Degradation, Params


def keep_known_pixels(output: Tensor, measurement: Tensor, mask: Tensor, feather: int = 4) -> Tensor:
    """``output`` with the measurement's known pixels (``mask`` 1) restored exactly and the residual at the
    border faded into the hole over ``feather`` px (0: a hard paste)."""
    mask = (mask.to(output) > 0.5).to(output).expand(output.shape[0], 1, *output.shape[-2:])
    y = measurement.to(output)
    residual = mask * (y - output)
    weight = mask.clone()
    filled = mask.clone()
    for ring in range(1, feather + 1):
        num = F.avg_pool2d(residual * filled, 3, stride=1, padding=1, count_include_pad=False)
        den = F.avg_pool2d(filled, 3, stride=1, padding=1, count_include_pad=False)
        new = (den > 0) & (filled == 0)
        if not new.any():
            break
        residual = torch.where(new, num / den.clamp_min(1e-12), residual)
        weight = torch.where(new, torch.full_like(weight, 1 - ring / (feather + 1)), weight)
        filled = torch.where(new, torch.ones_like(filled), filled)
    composed = output + weight * residual
    known = mask.expand_as(output) > 0
    return torch.where(known, y.expand_as(output), composed.clamp(-1, 1))


def data_consistency(
    output: Tensor, measurement: Tensor, degradation: Degradation, params: Params, steps: int
) -> Tensor:
    """``steps`` steepest-descent steps on ``0.5 ||A(x) - y||^2`` from ``output`` (exact line search for a
    linear ``A``), bounded to [-1, 1]; ``steps = 0`` returns ``output`` unchanged."""
    x = output.detach().float()
    y = measurement.detach().float()
    for _ in range(steps):
        with torch.enable_grad():
            var = x.clone().requires_grad_(True)
            residual = degradation.A(var, params) - y
            (grad,) = torch.autograd.grad(0.5 * residual.pow(2).sum(), var)
        with torch.no_grad():
            if degradation.linear:  # the minimiser along -grad of the quadratic
                num = grad.flatten(1).pow(2).sum(1)
                den = degradation.A(grad, params).flatten(1).pow(2).sum(1).clamp_min(1e-12)
                step = (num / den).view(-1, 1, 1, 1)
            else:  # straight-through codecs (JPEG): the Jacobian is taken as the identity, a Gauss-Newton step
                step = torch.ones(x.shape[0], 1, 1, 1)
            x = (x - step.to(x) * grad).clamp(-1, 1)
    return x
