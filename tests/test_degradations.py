"""Contracts every degradation keeps: shapes, ranges, seeded determinism, linearity/adjointness, task files."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from silo.degradations import (
    JPEG,
    GaussianBlur,
    Inpainting,
    MotionBlur,
    SuperResolution,
    imresize,
    list_tasks,
    load_task,
)
from silo.degradations.resize import resize_matrix
from silo.errors import SiloError
from silo.testing import random_images

TASKS = list_tasks()


def test_all_reference_tasks_are_shipped():
    assert set(TASKS) >= {
        "sr4",
        "sr8",
        "gaussian_blur",
        "motion_blur",
        "inpaint_center",
        "inpaint_random",
        "jpeg",
        "identity",
    }


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("size", [(64, 64), (72, 96)])
def test_shapes_range_and_seeded_determinism(task, size):
    t = load_task(task)
    deg = t.degradation
    x = random_images(2, size, seed=1)
    params = deg.sample_params(x.shape, [3, 4])
    y1 = deg.measure(x, params, [3, 4])
    y2 = deg.measure(x, deg.sample_params(x.shape, [3, 4]), [3, 4])
    assert y1.shape[-2:] == deg.measurement_shape(*size)
    assert deg.to_image_size(y1).shape == x.shape
    assert torch.equal(y1, y2), "same seeds must give the same measurement"
    clean = deg.A(x, params)
    assert clean.min() >= -1.01 and clean.max() <= 1.01
    if t.noise_sigma > 0:
        noise = (y1 - clean).std().item()
        assert abs(noise - 2 * t.noise_sigma) < 0.3 * 2 * t.noise_sigma, "noise std is 2*sigma on [-1, 1]"
        y3 = deg.measure(x, params, [5, 6])
        assert not torch.equal(y1, y3)


@pytest.mark.parametrize("task", TASKS)
def test_batch_equals_single(task):
    deg = load_task(task).degradation
    x = random_images(3, (64, 64), seed=2)
    seeds = [10, 11, 12]
    batch = deg.measure(x, deg.sample_params(x.shape, seeds), seeds)
    for i, s in enumerate(seeds):
        xi = x[i : i + 1]
        single = deg.measure(xi, deg.sample_params(xi.shape, [s]), [s])
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("task", [t for t in TASKS if load_task(t).degradation.linear])
def test_linear_operators_are_linear_and_adjoint_matches(task):
    deg = load_task(task).degradation
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 64, 64, generator=g, dtype=torch.float64)
    x2 = torch.randn(1, 3, 64, 64, generator=g, dtype=torch.float64)
    params = {k: v.double() for k, v in deg.sample_params(x.shape, [0]).items()}
    torch.testing.assert_close(deg.A(2 * x + x2, params), 2 * deg.A(x, params) + deg.A(x2, params))
    y = torch.randn_like(deg.A(x, params))
    lhs = (deg.A(x, params) * y).sum()
    rhs = (x * deg.adjoint(y, x, params)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_jpeg_really_compresses_and_is_not_linear():
    deg = JPEG(quality=10)
    x = random_images(1, (64, 64), seed=3) + 0.1 * torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x = x.clamp(-1, 1)
    y = deg.A(x)
    assert not deg.linear
    assert (y - x).abs().mean() > 0.01, "quality 10 must visibly change the image"
    arr = ((y[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=10)
    again = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 127.5 - 1
    assert np.abs(again - y[0].permute(1, 2, 0).numpy()).mean() < (y - x).abs().mean().item(), (
        "re-encoding a JPEG changes it less"
    )
    # straight-through gradient
    xg = x.clone().requires_grad_(True)
    deg.A(xg).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))


@pytest.mark.parametrize("box", ["center", "random"])
@pytest.mark.parametrize("size", [(64, 64), (128, 96)])
def test_inpainting_masks_have_the_stated_size(box, size):
    deg = Inpainting(box=box, box_fraction=0.5, margin_fraction=1 / 32)
    params = deg.sample_params((4, 3, *size), [0, 1, 2, 3])
    mask = params["mask"]
    assert mask.shape == (4, 1, *size)
    bh, bw = size[0] // 2, size[1] // 2
    for m in mask:
        holes = (m[0] == 0).nonzero()
        assert (m == 0).sum() == bh * bw
        rows, cols = holes[:, 0], holes[:, 1]
        assert rows.max() - rows.min() + 1 == bh and cols.max() - cols.min() + 1 == bw
        margin = round(size[0] / 32)
        assert rows.min() >= margin and size[0] - 1 - rows.max() >= margin
        if box == "center":
            assert rows.min() == (size[0] - bh) // 2
    if box == "random":
        assert len({tuple((m[0] == 0).nonzero()[0].tolist()) for m in mask}) > 1, "boxes differ between seeds"


def test_matlab_bicubic_matches_known_values():
    # imresize(1:8, 0.5) worked by hand: centre 1.5, kernel 0.5*cubic(0.5 d) over 8 taps, mirrored borders
    # -> first output = 3*(-0.01172) + 2*(-0.03516) + 1*(0.11328 + 0.43359) + 2*0.43359 + 3*0.11328
    #                   + 4*(-0.03516) + 5*(-0.01172)
    row = torch.arange(1, 9, dtype=torch.float64)
    out = resize_matrix(8, 4) @ row
    torch.testing.assert_close(
        out, torch.tensor([1.44921875, 3.48828125, 5.51171875, 7.55078125], dtype=torch.float64), atol=1e-6, rtol=0
    )
    x = torch.rand(1, 3, 16, 24, dtype=torch.float64)
    assert imresize(x, (4, 6)).shape == (1, 3, 4, 6)
    torch.testing.assert_close(imresize(torch.ones(1, 1, 9, 7), (36, 28)), torch.ones(1, 1, 36, 28))


def test_sr_refuses_indivisible_sizes():
    with pytest.raises(SiloError, match="not divisible"):
        SuperResolution(4).A(torch.zeros(1, 3, 30, 32))


def test_blur_kernels():
    k = GaussianBlur(61, 3.0).kernel
    assert k.shape == (61, 61) and abs(k.sum().item() - 1) < 1e-5
    m = MotionBlur(31, 0.5)
    kernels = m.sample_params((2, 3, 64, 64), [1, 2])["kernel"]
    assert kernels.shape == (2, 31, 31)
    assert torch.allclose(kernels.sum((1, 2)), torch.ones(2))
    assert not torch.equal(kernels[0], kernels[1])
    with pytest.raises(SiloError, match="too small"):
        GaussianBlur(61, 3.0).A(torch.zeros(1, 3, 20, 20))


def test_task_file_errors(tmp_path):
    with pytest.raises(SiloError, match="unknown task"):
        load_task("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("degradation: {type: [unclosed")
    with pytest.raises(SiloError, match="malformed YAML"):
        load_task(bad)
    bad.write_text("degradation: {type: warp}\n")
    with pytest.raises(SiloError, match="unknown degradation type"):
        load_task(bad)
    bad.write_text("degradation: {type: jpeg, qualty: 5}\n")
    with pytest.raises(SiloError, match="bad settings"):
        load_task(bad)
    good = tmp_path / "mine.yaml"
    good.write_text("degradation: {type: super_resolution, scale: 2}\nnoise_sigma: 0.05\n")
    task = load_task(good)
    assert task.degradation.scale == 2 and task.noise_sigma == 0.05
    assert load_task("sr4", noise_sigma=0.0).degradation.noise_sigma == 0.0
