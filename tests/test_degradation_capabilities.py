"""Every degradation's declared capabilities are true of its behaviour, the noise has one owner, and a user's
``module:callable`` degradation still loads."""

import pytest
import torch

from silo.degradations import DEGRADATIONS, Degradation, list_tasks, load_task
from silo.degradations.user import UserDegradation, load_user_degradation, user_task
from silo.testing import random_images

SIZE = 64
CAPABILITIES = {"linear", "differentiable", "uses_mask", "uses_kernel", "needs_kernel", "random_params", "scale"}


def stride2(x: torch.Tensor) -> torch.Tensor:
    return x[..., ::2, ::2]


SUBJECTS = {
    **{f"task-{name}": (lambda name=name: load_task(name).degradation) for name in list_tasks()},
    **{f"class-{kind}": cls for kind, cls in DEGRADATIONS.items()},
    "user-stride2": lambda: UserDegradation(stride2, "stride2", scale=2),
}


@pytest.fixture(params=sorted(SUBJECTS))
def deg(request) -> Degradation:
    return SUBJECTS[request.param]()


def params_for(deg: Degradation, seed: int, batch: int = 1) -> dict:
    return deg.sample_params((batch, 3, SIZE, SIZE), [seed + i for i in range(batch)])


def differ(a: dict, b: dict) -> bool:
    return set(a) != set(b) or any(not torch.equal(a[k], b[k]) for k in a)


def test_capabilities_are_listed_and_typed(deg):
    caps = deg.capabilities()
    assert set(caps) == CAPABILITIES
    assert all(caps[k] == getattr(deg, k) for k in caps)
    assert all(isinstance(caps[k], bool) for k in CAPABILITIES - {"scale"})
    assert isinstance(caps["scale"], int) and caps["scale"] >= 1
    assert deg.has_blur_kernel == deg.uses_kernel


def test_random_params_iff_seeds_give_different_params(deg):
    assert deg.random_params == differ(params_for(deg, 1), params_for(deg, 2))


def test_uses_mask_iff_a_mask_is_given_and_read(deg):
    params = params_for(deg, 3)
    mask = deg.mask(params)
    assert deg.uses_mask == (mask is not None)
    if deg.uses_mask:
        x = random_images(1, (SIZE, SIZE), seed=0)
        assert mask.shape == (1, 1, SIZE, SIZE)
        assert not torch.equal(deg.A(x, params), deg.A(x, {**params, "mask": torch.ones_like(mask)}))


def test_uses_kernel_iff_a_kernel_is_given_and_read(deg):
    params = params_for(deg, 3)
    kernel = deg.blur_kernel(params)
    assert deg.uses_kernel == (kernel is not None)
    if deg.uses_kernel:
        x = random_images(1, (SIZE, SIZE), seed=0)
        delta = torch.zeros(kernel.shape[-1], kernel.shape[-1])
        delta[kernel.shape[-1] // 2, kernel.shape[-1] // 2] = 1
        torch.testing.assert_close(deg.A(x, {**params, "kernel": delta}), x)  # the kernel passed is the one used


def test_needs_kernel_iff_the_kernel_is_drawn_per_image(deg):
    if deg.needs_kernel:
        assert deg.uses_kernel
    drawn = deg.uses_kernel and not torch.equal(
        deg.blur_kernel(params_for(deg, 1)), deg.blur_kernel(params_for(deg, 2))
    )
    assert deg.needs_kernel == drawn


def test_scale_is_the_ratio_of_image_to_measurement(deg):
    s = deg.scale
    assert deg.measurement_shape(SIZE, 2 * SIZE) == (SIZE // s, 2 * SIZE // s)
    assert deg.image_shape(SIZE // s, 2 * SIZE // s) == (SIZE, 2 * SIZE)
    x = random_images(1, (SIZE, SIZE), seed=0)
    y = deg.A(x, params_for(deg, 0))
    assert y.shape[-2:] == (SIZE // s, SIZE // s)
    assert deg.to_image_size(y).shape == x.shape


@pytest.mark.parametrize("name", [k for k in sorted(SUBJECTS) if SUBJECTS[k]().linear])
def test_linear_means_linear(name):
    deg = SUBJECTS[name]()
    g = torch.Generator().manual_seed(0)
    x, z = (torch.randn(2, 3, SIZE, SIZE, generator=g, dtype=torch.float64) for _ in range(2))
    params = {k: v.double() for k, v in params_for(deg, 5, batch=2).items()}
    a, b = 0.7, -1.3
    torch.testing.assert_close(deg.A(a * x + b * z, params), a * deg.A(x, params) + b * deg.A(z, params))


@pytest.mark.parametrize("name", [k for k in sorted(SUBJECTS) if SUBJECTS[k]().differentiable])
def test_differentiable_means_autograd_matches_finite_differences(name):
    deg = SUBJECTS[name]()
    g = torch.Generator().manual_seed(1)
    x, v = (torch.rand(1, 3, SIZE, SIZE, generator=g, dtype=torch.float64) * 1.6 - 0.8 for _ in range(2))
    params = {k: v_.double() for k, v_ in params_for(deg, 6).items()}
    x.requires_grad_(True)
    out = deg.A(x, params)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, x, grad_outputs=w)
    eps = 1e-4
    with torch.no_grad():
        fd = (deg.A(x + eps * v, params) - deg.A(x - eps * v, params)) / (2 * eps)
    torch.testing.assert_close((grad * v).sum(), (w * fd).sum(), rtol=1e-5, atol=1e-6)


def test_undeclared_random_params_are_probed():
    class Shift(Degradation):
        def sample_params(self, shape, seeds):
            return {"shift": torch.tensor([s % 7 for s in seeds])}

    class Fixed(Degradation):
        def sample_params(self, shape, seeds):
            return {"gain": torch.ones(len(seeds))}

    assert Shift().random_params and not Fixed().random_params and not Degradation().random_params


@pytest.mark.parametrize("task", list_tasks())
def test_the_task_reads_its_noise_from_the_degradation(task):
    t = load_task(task)
    assert t.noise_sigma == t.degradation.noise_sigma == t.to_dict()["noise_sigma"]
    t.degradation.noise_sigma = 0.123
    assert t.noise_sigma == 0.123
    with pytest.raises(AttributeError):
        t.noise_sigma = 0.5
    override = load_task(task, noise_sigma=0.07)
    assert override.noise_sigma == override.degradation.noise_sigma == 0.07


@pytest.mark.parametrize("task", list_tasks())
def test_measure_is_a_of_x_plus_the_tasks_noise(task):
    size = 128  # enough measurement pixels (sr8: 16x16) to estimate the noise level
    seeds = [3, 4]
    t = load_task(task, noise_sigma=0.05)
    deg = t.degradation
    x, x2 = random_images(2, (size, size), seed=1), random_images(2, (size, size), seed=2)
    params = deg.sample_params(x.shape, seeds)
    noise = deg.measure(x, params, seeds) - deg.A(x, params)
    assert abs(noise.std().item() - 2 * t.noise_sigma) < 0.1 * 2 * t.noise_sigma, "noise std is 2*sigma on [-1, 1]"
    assert abs(noise.mean().item()) < 0.1 * 2 * t.noise_sigma
    # the noise comes from the seeds alone, not from the image
    torch.testing.assert_close(deg.measure(x2, params, seeds) - deg.A(x2, params), noise, atol=1e-5, rtol=0)
    clean = load_task(task, noise_sigma=0.0).degradation
    assert torch.equal(clean.measure(x, params, seeds), clean.A(x, params))


def test_user_degradation_loads_from_module_callable(tmp_path):
    (tmp_path / "mydeg.py").write_text("def halve(x):\n    return x[..., ::2, ::2]\n")
    spec = f"{tmp_path / 'mydeg.py'}:halve"
    deg = load_user_degradation(spec, noise_sigma=0.02)
    assert isinstance(deg, Degradation) and deg.scale == 2 and deg.noise_sigma == 0.02
    assert deg.capabilities() == {
        "linear": False,
        "differentiable": False,
        "uses_mask": False,
        "uses_kernel": False,
        "needs_kernel": False,
        "random_params": False,
        "scale": 2,
    }
    task = user_task(spec, noise_sigma=0.03)
    assert task.noise_sigma == task.degradation.noise_sigma == 0.03


def test_the_old_user_degradation_module_reexports():
    import silo.degradations.user as new
    import silo.training.user_degradation as old

    assert old.__all__ and all(getattr(old, name) is getattr(new, name) for name in old.__all__)
