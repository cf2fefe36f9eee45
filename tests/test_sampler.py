"""The SILO sampler loop: batch == single runs, callbacks, schedulers, CFG, NaN detection, guidance effect."""

from types import SimpleNamespace

import pytest
import torch

from silo.degradations import load_task
from silo.errors import SiloError
from silo.pipeline import restore
from silo.samplers import Problem, SamplerSettings, silo
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
        restore(tiny_prior, task, settings, [3], reference=x, operator=operator,
                callback=lambda info: seen.append(float(info["loss"][0])), show_progress=False)
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
        silo(tiny_prior, problem, SamplerSettings(steps=2))
