"""Peer samplers on the tiny random prior: they restore, batches equal single runs, each back-propagates only
through what its method says, guidance moves toward the measurement (every method with a step size), and PSLD
refuses non-linear tasks."""

from types import SimpleNamespace

import pytest
import torch

from silo.degradations import load_task
from silo.errors import SiloError
from silo.pipeline import restore
from silo.samplers import SAMPLERS, Problem, SamplerSettings
from silo.samplers.psld import _NormalOperator
from silo.testing import random_images
from test_sampler import LatentConv

NEW_METHODS = ["silo_x0", "ldps", "psld"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def operator():
    torch.manual_seed(0)
    return LatentConv().eval()


def _restore(prior, method, x, seeds, operator=None, task="sr4", steps=3, callback=None, **kw):
    settings = SamplerSettings(steps=steps, **kw)
    return restore(
        prior,
        load_task(task),
        settings,
        seeds,
        reference=x,
        method=method,
        operator=operator,
        param_seeds=seeds,
        callback=callback,
        show_progress=False,
    )


@pytest.mark.parametrize("method", NEW_METHODS)
def test_method_restores_and_batch_equals_single_runs(tiny_prior, operator, method):
    x = random_images(2, (32, 32), seed=3)
    batch = _restore(tiny_prior, method, x, [5, 6], operator)
    assert batch.output.shape == x.shape and torch.isfinite(batch.output).all()
    assert batch.output.min() >= -1 and batch.output.max() <= 1
    single = _restore(tiny_prior, method, x[1:], [6], operator)
    torch.testing.assert_close(batch.output[1:], single.output, atol=2e-4, rtol=0)


@pytest.mark.parametrize("method", NEW_METHODS)
def test_ddim_and_inpainting(tiny_prior, operator, method):
    x = random_images(1, (32, 32), seed=4)
    res = _restore(tiny_prior, method, x, [1], operator, task="inpaint_center", scheduler="ddim", steps=2)
    assert torch.isfinite(res.output).all()


def test_psld_refuses_jpeg_clearly(tiny_prior):
    with pytest.raises(SiloError, match="psld needs a linear degradation.*jpeg is not linear"):
        _restore(tiny_prior, "psld", random_images(1, (32, 32)), [1], task="jpeg")


def test_ldps_runs_jpeg_through_its_straight_through_gradient(tiny_prior):
    res = _restore(tiny_prior, "ldps", random_images(1, (32, 32)), [1], task="jpeg", steps=2)
    assert torch.isfinite(res.output).all()


def test_x0_silo_needs_a_z0_operator(tiny_prior):
    problem = Problem(load_task("sr4").degradation, torch.zeros(1, 3, 8, 8), seeds=[1])
    with pytest.raises(SiloError, match="needs a latent operator"):
        SAMPLERS["silo_x0"](tiny_prior, problem, SamplerSettings(steps=2))
    readout = SimpleNamespace(needs_features=True)
    with pytest.raises(SiloError, match="readout"):
        SAMPLERS["silo_x0"](tiny_prior, problem, SamplerSettings(steps=2), operator=readout)


def test_x0_silo_costs_one_unet_forward_per_step_and_no_unet_backward(tiny_prior, operator):
    calls = []
    handle = tiny_prior.unet.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    try:
        _restore(tiny_prior, "silo_x0", random_images(1, (32, 32)), [1], operator, steps=4)
    finally:
        handle.remove()
    assert calls == [False] * 4


@pytest.mark.parametrize("method,through_decoder", [("ldps", True), ("psld", True), ("silo_x0", False)])
def test_what_each_method_back_propagates_through(tiny_prior, operator, method, through_decoder):
    backward = []
    handle = tiny_prior.vae.decoder.register_full_backward_hook(lambda m, gi, go: backward.append(1))
    try:
        _restore(tiny_prior, method, random_images(1, (32, 32)), [1], operator, steps=2)
    finally:
        handle.remove()
    assert (len(backward) == 2) == through_decoder


@pytest.mark.parametrize("task", ["sr4", "inpaint_center", "gaussian_blur"])
def test_psld_normal_operator_is_its_own_exact_adjoint(task):
    """Backward of ``A^T A`` (through the adjoint) equals autograd's double-backward through ``A`` itself."""
    deg = load_task(task).degradation
    size = 64 if "blur" in task else 32
    x = random_images(1, (size, size), seed=1).requires_grad_(True)
    params = deg.sample_params(x.shape, [0])
    u = random_images(1, (size, size), seed=2)
    ours = _NormalOperator.apply(x, deg, params)
    (g_ours,) = torch.autograd.grad((ours * u).sum(), x)
    (ata,) = torch.autograd.grad(0.5 * deg.A(x, params).pow(2).sum(), x, create_graph=True)
    torch.testing.assert_close(ours, ata, atol=1e-4, rtol=1e-4)
    (g_ref,) = torch.autograd.grad((ata * u).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "method,off,on",
    [
        ("ldps", {"zeta": 0.0}, {"zeta": 2.0}),
        ("psld", {"zeta": 0.0}, {"zeta": 2.0}),
        ("silo_x0", {"step": 0.0}, {"step": 2.0}),
        ("resample", {"zeta": 0.0, "iterations": 0}, {}),
        ("daps", {"lr": 0.0}, {}),
        ("silo_daps", {"lr": 0.0}, {}),
    ],
)
def test_guidance_moves_toward_the_measurement(tiny_prior, operator, method, off, on):
    """With no data term (step size 0) the measurement residual is the prior's; with a step it ends lower."""
    x = random_images(1, (32, 32), seed=6)
    deg = load_task("identity" if method != "psld" else "inpaint_center").degradation
    params = deg.sample_params(x.shape, [3])
    problem = Problem(deg, deg.add_noise(deg.A(x, params), [3]), params, [3])
    final = {}
    for name, options in (("off", off), ("on", on)):
        seen = []
        SAMPLERS[method](
            tiny_prior,
            problem,
            SamplerSettings(steps=8),
            operator=operator,
            show_progress=False,
            callback=lambda info, seen=seen: seen.append(float(info["loss"][0])),
            **options,
        )
        final[name] = seen[-1]
    assert final["on"] < final["off"]


def test_registry_and_defaults_are_documented():
    import inspect
    from importlib import import_module

    latent_dps, psld, silo_x0 = (import_module(f"silo.samplers.{m}") for m in ("latent_dps", "psld", "silo_x0"))
    tuned = {
        "ldps": {"zeta": latent_dps.DEFAULT_ZETA},
        "psld": {"zeta": latent_dps.DEFAULT_ZETA, "gamma": psld.DEFAULT_GAMMA},
        "silo_x0": {"step": silo_x0.DEFAULT_STEP},
    }
    assert tuned == {"ldps": {"zeta": 0.125}, "psld": {"zeta": 0.125, "gamma": 0.001}, "silo_x0": {"step": 2.0}}
    for method, options in tuned.items():
        spec = SAMPLERS[method]
        params = inspect.signature(spec.fn).parameters
        assert list(params)[:3] == ["ctx", "operator", "callback"]
        assert spec.options == options
        assert "tuned on silo-tiny" in spec.fn.__doc__
