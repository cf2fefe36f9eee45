"""The SILO sampler loop: batch == single runs, callbacks, schedulers, CFG, NaN detection, guidance effect."""

from types import SimpleNamespace

import pytest
import torch

from silo.degradations import load_task
from silo.errors import SiloError
from silo.pipeline import restore
from silo.samplers import SAMPLERS, Problem, SamplerSettings
from silo.testing import random_images


class LatentConv(torch.nn.Module):
    """A minimal operator honouring the CNN contract ``H(z0, sigma_emb)``, for testing the loop alone."""

    kind = "cnn"
    needs_features = False
    uses_unet_sigma_embedding = True

    def __init__(self, channels=4, emb=64, scale=1.0):
        super().__init__()
        self.config = SimpleNamespace(sigma_conditioned=True, mask_channel=False)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = torch.nn.Linear(emb, channels)
        self.scale = scale

    def forward(self, z0, sigma_emb, mask=None):
        return self.scale * (self.conv(z0) + self.emb(sigma_emb)[:, :, None, None])


@pytest.fixture(scope="module")
def operator():
    torch.manual_seed(0)
    return LatentConv().eval()


def _run(prior, operator, x, seeds, **kw):
    task = load_task("sr4")
    settings = SamplerSettings(steps=kw.pop("steps", 6), eta=0.5, **kw)
    return restore(prior, task, settings, seeds, reference=x, operator=operator, param_seeds=seeds, show_progress=False)


def test_batch_equals_single_runs(tiny_prior, operator):
    x = random_images(3, (32, 32), seed=4)
    seeds = [1000, 1001, 1002]
    batch = _run(tiny_prior, operator, x, seeds)
    for i in range(3):
        single = _run(tiny_prior, operator, x[i : i + 1], [seeds[i]])
        torch.testing.assert_close(batch.output[i : i + 1], single.output, atol=2e-4, rtol=0)


def test_same_seed_same_result_and_seed_matters(tiny_prior, operator):
    x = random_images(1, (32, 32), seed=5)
    a = _run(tiny_prior, operator, x, [7], deterministic=True)
    b = _run(tiny_prior, operator, x, [7], deterministic=True)
    c = _run(tiny_prior, operator, x, [8])
    assert torch.equal(a.output, b.output)
    assert not torch.allclose(a.output, c.output)


def test_guidance_moves_latents_toward_the_measurement(tiny_prior, operator):
    """With eta > 0 the guidance term must change the trajectory; with eta = 0 it must not."""
    x = random_images(1, (32, 32), seed=6)
    losses = {}
    for eta in (0.0, 2.0):
        seen = []
        task = load_task("identity")
        settings = SamplerSettings(steps=8, eta=eta)
        restore(
            tiny_prior,
            task,
            settings,
            [3],
            reference=x,
            operator=operator,
            callback=lambda info, seen=seen: seen.append(float(info["loss"][0])),
            show_progress=False,
        )
        losses[eta] = seen
    assert len(losses[0.0]) == 8
    assert losses[2.0][-1] < losses[0.0][-1], "guided sampling ends closer to the encoded measurement"


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim"])
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_schedulers_and_odd_sizes(tiny_prior, operator, scheduler, size):
    x = random_images(1, size, seed=7)
    res = _run(tiny_prior, operator, x, [1], scheduler=scheduler, steps=4)
    assert res.output.shape == x.shape
    assert torch.isfinite(res.output).all()
    assert res.output.min() >= -1 and res.output.max() <= 1


def test_classifier_free_guidance_and_cfg_fix(tiny_conditional_prior):
    op = LatentConv().eval()
    x = random_images(2, (32, 32), seed=8)
    outs = {}
    for fix in (False, True):
        res = _run(tiny_conditional_prior, op, x, [1, 2], guidance_scale=3.0, cfg_fix=fix, prompt="a photo", steps=4)
        assert torch.isfinite(res.output).all()
        outs[fix] = res.output
    assert not torch.allclose(outs[False], outs[True]), "cfg_fix changes what the operator sees"


def test_nan_during_sampling_is_a_clear_error(tiny_prior):
    op = LatentConv(scale=float("nan")).eval()
    x = random_images(1, (32, 32), seed=9)
    with pytest.raises(SiloError, match="NaN or Inf .* at step 0"):
        _run(tiny_prior, op, x, [1])


def test_bad_settings(tiny_prior, operator):
    x = random_images(1, (32, 32))
    with pytest.raises(SiloError, match="steps must be"):
        _run(tiny_prior, operator, x, [1], steps=5000)
    with pytest.raises(SiloError, match="unknown scheduler"):
        _run(tiny_prior, operator, x, [1], scheduler="euler")
    with pytest.raises(SiloError, match="not a multiple"):
        _run(tiny_prior, operator, random_images(1, (36, 36)), [1])
    problem = Problem(load_task("sr4").degradation, torch.zeros(1, 3, 8, 8), seeds=[1])
    with pytest.raises(SiloError, match="needs a latent operator"):
        SAMPLERS["silo"](tiny_prior, problem, SamplerSettings(steps=2))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predict_x0_matches_the_scheduler(tiny_prior, prediction_type):
    """cfg_fix recomputes z0_hat from the conditional prediction; it must equal what the scheduler computes."""
    from diffusers import DDPMScheduler

    from silo.samplers.common import predict_x0

    sched = DDPMScheduler.from_config(tiny_prior.scheduler.config, prediction_type=prediction_type, clip_sample=False)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    z, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = sched.timesteps[3]
    expected = sched.step(out, t, z, generator=torch.Generator().manual_seed(1)).pred_original_sample
    torch.testing.assert_close(predict_x0(sched, out, t, z), expected)


def test_ddim_differs_from_ddpm_and_ddim_eta_matters(tiny_prior, operator):
    x = random_images(1, (32, 32), seed=10)
    ddpm = _run(tiny_prior, operator, x, [1], scheduler="ddpm", steps=4).output
    ddim = _run(tiny_prior, operator, x, [1], scheduler="ddim", steps=4).output
    ddim_noisy = _run(tiny_prior, operator, x, [1], scheduler="ddim", steps=4, ddim_eta=1.0).output
    assert not torch.allclose(ddpm, ddim, atol=1e-3)
    assert not torch.allclose(ddim, ddim_noisy, atol=1e-3)


def test_readout_operator_batch_equals_single(tiny_prior):
    from silo.operators import ReadoutOperator
    from silo.operators.features import feature_channels

    torch.manual_seed(0)
    op = ReadoutOperator(
        latent_channels=4,
        embedding_dim=tiny_prior.embedding_dim,
        feature_channels=feature_channels(tiny_prior.unet),
        bottleneck_channels=8,
        projection_dim=16,
        norm_groups=4,
        head_channels=(8, 8),
        norm_size=8,
    ).eval()
    x = random_images(2, (32, 32), seed=11)
    batch = _run(tiny_prior, op, x, [5, 6], steps=3)
    for i, s in enumerate([5, 6]):
        single = _run(tiny_prior, op, x[i : i + 1], [s], steps=3)
        torch.testing.assert_close(batch.output[i : i + 1], single.output, atol=2e-4, rtol=0)


def test_measurement_inpainting_ignores_what_the_hole_holds(tiny_prior, operator):
    """The user's file may have anything in the hole; the measurement is y * mask."""
    task = load_task("inpaint_center")
    x = random_images(1, (32, 32), seed=12)
    params = task.degradation.sample_params(x.shape, [0])
    holey = x * params["mask"]
    garbage = holey + (1 - params["mask"]) * 0.7
    settings = SamplerSettings(steps=3)
    a = restore(
        tiny_prior, task, settings, [1], measurement=holey, params=params, operator=operator, show_progress=False
    )
    b = restore(
        tiny_prior, task, settings, [1], measurement=garbage, params=params, operator=operator, show_progress=False
    )
    torch.testing.assert_close(a.output, b.output)


def test_pad_samples_at_a_valid_size_and_crops_back(tiny_prior, operator):
    task = load_task("sr4")
    y = random_images(1, (7, 9), seed=13)  # a 36x28 image: not a multiple of 8
    with pytest.raises(SiloError, match="--pad"):
        restore(tiny_prior, task, SamplerSettings(steps=2), [1], measurement=y, operator=operator, show_progress=False)
    sizes = []
    res = restore(
        tiny_prior,
        task,
        SamplerSettings(steps=2),
        [1],
        measurement=y,
        operator=operator,
        show_progress=False,
        pad=True,
        callback=lambda info: sizes.append(tuple(info["z"].shape[-2:])),
    )
    assert res.output.shape[-2:] == (28, 36) and res.a_output.shape[-2:] == (7, 9)
    assert sizes[0] == (8, 10), "sampled at 32x40 (latent 8x10), the padded size"


@pytest.mark.parametrize("method", ["silo", "silo_x0", "ldps"])
def test_warm_start_runs_the_last_part_of_the_schedule(tiny_prior, operator, method):
    """start_strength < 1 runs only the last round(strength * steps) timesteps, from the noised measurement."""
    x = random_images(1, (32, 32), seed=9)
    task = load_task("sr4")
    seen = []
    settings = SamplerSettings(steps=10, eta=0.5, start_strength=0.3)
    res = restore(
        tiny_prior,
        task,
        settings,
        [5],
        reference=x,
        method=method,
        show_progress=False,
        operator=operator if method.startswith("silo") else None,
        callback=lambda info, seen=seen: seen.append(int(info["t"])),
    )
    full = SamplerSettings(steps=10)
    from silo.samplers.context import make_scheduler

    timesteps = [int(t) for t in make_scheduler(tiny_prior, full).timesteps]
    assert seen == timesteps[-3:] and res.steps == settings.steps_run == 3
    cold = restore(
        tiny_prior,
        task,
        SamplerSettings(steps=10, eta=0.5),
        [5],
        reference=x,
        method=method,
        operator=operator if method.startswith("silo") else None,
        show_progress=False,
    )
    assert cold.steps == 10 and not torch.allclose(cold.output, res.output)


def test_warm_start_keeps_the_measurement_where_the_noise_is_small(tiny_prior):
    """A warm start from a barely noised measurement ends nearer the measurement than a cold start."""
    x = random_images(2, (32, 32), seed=10)
    task = load_task("identity")
    ends = {}
    for strength in (0.05, 1.0):
        seen = []
        settings = SamplerSettings(steps=40, eta=0.0, start_strength=strength, scheduler="ddim")
        restore(
            tiny_prior,
            task,
            settings,
            [1, 2],
            reference=x,
            operator=LatentConv().eval(),
            show_progress=False,
            callback=lambda info, seen=seen: seen.append(info["z"]),
        )
        with torch.no_grad():
            w = tiny_prior.encode(x, sample=False)
        ends[strength] = (seen[-1] - w).flatten(1).norm(dim=1).mean().item()
    assert ends[0.05] < ends[1.0]


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5])
def test_bad_start_strength_is_a_clear_error(tiny_prior, operator, strength):
    x = random_images(1, (32, 32), seed=11)
    with pytest.raises(SiloError, match="start_strength"):
        restore(
            tiny_prior,
            load_task("sr4"),
            SamplerSettings(steps=4, start_strength=strength),
            [1],
            reference=x,
            operator=operator,
            show_progress=False,
        )


def test_eta_reference_size_scales_the_step_with_the_image_side(tiny_prior, operator):
    """An eta tuned at 16 px, used on 32 px images, is the plain eta times 2 (the side ratio)."""
    x = random_images(1, (32, 32), seed=9)
    task = load_task("sr4")

    def run(eta, size):
        settings = SamplerSettings(steps=4, eta=eta, eta_reference_size=size, deterministic=True)
        return restore(
            tiny_prior, task, settings, [5], reference=x, operator=operator, param_seeds=[5], show_progress=False
        ).output

    torch.testing.assert_close(run(0.5, 16), run(1.0, None))
    torch.testing.assert_close(run(0.5, 32), run(0.5, None))
    assert not torch.allclose(run(0.5, 16), run(0.5, None))
    assert SamplerSettings(eta=2.0, eta_reference_size=64).guidance_eta(256, 128) == pytest.approx(
        2.0 * 181.019 / 64, rel=1e-4
    )


@pytest.mark.parametrize("method", ["silo", "silo_x0"])
def test_kernel_aware_operator_reads_each_images_kernel(tiny_prior, method):
    """Motion blur draws a kernel per image; a kernel-aware operator gets exactly those kernels at every step."""
    from silo.operators import CNNOperator

    torch.manual_seed(0)
    op = (
        CNNOperator(
            latent_channels=4,
            embedding_dim=tiny_prior.embedding_dim,
            channels=(8, 8, 8, 8),
            norm_size=8,
            residual=True,
            blur_kernel_scale=tiny_prior.vae_scale,
        )
        .eval()
        .requires_grad_(False)
    )
    seen = []
    op.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["kernel"]), with_kwargs=True)
    task = load_task("motion_blur")
    x = random_images(2, (64, 64), seed=3)
    seeds = [11, 12]
    settings = SamplerSettings(steps=3, eta=0.5, scheduler="ddim")
    out = restore(tiny_prior, task, settings, seeds, reference=x, operator=op, method=method, show_progress=False)
    expected = task.degradation.sample_params(x.shape, seeds)["kernel"]
    assert len(seen) == 3 and all(torch.equal(k, expected) for k in seen)
    assert torch.isfinite(out.output).all()


def test_kernel_aware_operator_is_refused_for_a_task_without_a_kernel(tiny_prior, tmp_path):
    from silo.operators import CNNOperator
    from silo.runs.models import load_task_operator

    CNNOperator(
        latent_channels=4, embedding_dim=tiny_prior.embedding_dim, blur_kernel_scale=tiny_prior.vae_scale
    ).save_pretrained(tmp_path / "op")
    with pytest.raises(SiloError, match="kernel-aware .* but the task sr4 has none"):
        load_task_operator(tmp_path / "op", "cnn", tiny_prior, load_task("sr4"), tiny_prior.device)
    assert load_task_operator(
        tmp_path / "op", "cnn", tiny_prior, load_task("motion_blur"), tiny_prior.device
    ).needs_blur_kernel
