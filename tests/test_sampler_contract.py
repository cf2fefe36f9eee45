"""The sampler contract, for every registered method (and for a toy method added here with one function and
one registry entry, which then also runs through `silo restore` and `silo evaluate` with no other change)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from silo.cli import main
from silo.samplers.common import check_finite, predict, predict_x0
from silo.samplers.registry import SAMPLERS, register_sampler
from silo.testing import check_sampler_contract, contract_operator, random_images

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", list(SAMPLERS))
def test_every_registered_sampler_keeps_the_contract(tiny_prior, method):
    check_sampler_contract(method, tiny_prior, contract_operator(tiny_prior))


def toy(ctx, operator=None, callback=None, *, pull: float = 0.1):
    """A toy method: denoise, then pull z0_hat toward the encoded measurement by ``pull``."""
    z = ctx.z
    for i, t in ctx.steps("toy"):
        with torch.no_grad():
            guided, _ = predict(ctx.prior, z, t, ctx.prompts, ctx.settings.guidance_scale)
            z0_hat = predict_x0(ctx.scheduler, guided, t, z)
            z0 = z0_hat + pull * (ctx.w - z0_hat)
            check_finite(z0, i, "the latents")
            eps = (z - ctx.scheduler.alphas_cumprod[int(t)].sqrt() * z0) / (
                1 - ctx.scheduler.alphas_cumprod[int(t)]
            ).sqrt()
            z = ctx.scheduler.step(
                eps if ctx.scheduler.config.prediction_type == "epsilon" else guided, t, z, **ctx.step_kwargs()
            ).prev_sample
        if callback is not None:
            callback(
                {"step": i, "t": int(t), "z": z, "z0_hat": z0_hat, "loss": (ctx.w - z0_hat).flatten(1).norm(dim=1)}
            )
    return z


@pytest.fixture
def toy_registered():
    register_sampler("toy", toy, "toy pull", paired_reference="unet_forward")
    yield "toy"
    SAMPLERS.pop("toy")


def test_a_toy_sampler_is_one_function_and_one_entry(toy_registered, tiny_prior, tmp_path):
    check_sampler_contract("toy", tiny_prior)
    prior_dir = tmp_path / "prior"
    tiny_prior.save_pretrained(prior_dir)
    x = random_images(1, (32, 32), seed=2)[0]
    Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(tmp_path / "a.png")
    common = ["--prior", str(prior_dir), "--steps", "2", "--no-progress", "--no-lpips"]
    assert (
        main(
            [
                "restore",
                str(tmp_path / "a.png"),
                "--simulate",
                "--method",
                "toy",
                "--method-option",
                "pull=0.3",
                "--output-dir",
                str(tmp_path / "r"),
                *common,
            ]
        )
        == 0
    )
    (log,) = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("*.json")]
    assert log["method"] == "toy" and log["method_options"] == {"pull": 0.3}
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "a.png"),
                "--tasks",
                "sr4",
                "--methods",
                "toy,naive",
                "--output-dir",
                str(tmp_path / "e"),
                *common,
            ]
        )
        == 0
    )
    rows = {r["method"] for r in json.loads((tmp_path / "e" / "aggregate.json").read_text())["rows"]}
    assert rows == {"toy", "naive"}


def test_methods_lists_the_registry(toy_registered, capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in SAMPLERS:
        assert out.count(f"\n{name} ") + out.startswith(f"{name} ") == 1, name
    assert "toy pull: needs nothing; options pull=0.1" in out
    assert "psld" in out and "a linear degradation" in out


@pytest.mark.parametrize("method", list(SAMPLERS))
def test_any_variance_preserving_diffusers_scheduler_plugs_in(tiny_prior, method):
    from silo.degradations.tasks import load_task
    from silo.errors import SiloError
    from silo.pipeline import restore
    from silo.samplers import SamplerSettings

    x = random_images(1, (32, 32), seed=1)
    op = contract_operator(tiny_prior) if SAMPLERS[method].needs_operator else None
    seen = []
    out = restore(
        tiny_prior,
        load_task("sr4"),
        SamplerSettings(steps=3, scheduler="DPMSolverMultistepScheduler"),
        [1],
        reference=x,
        method=method,
        operator=op,
        show_progress=False,
        callback=seen.append,
    ).output
    assert torch.isfinite(out).all() and len(seen) == 3
    with pytest.raises(SiloError, match="variance-preserving scheduler"):  # sigma-space latents do not fit
        restore(
            tiny_prior,
            load_task("sr4"),
            SamplerSettings(steps=2, scheduler="EulerDiscreteScheduler"),
            [1],
            reference=x,
            method=method,
            operator=op,
            show_progress=False,
        )
