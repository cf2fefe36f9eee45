"""ReSample, Latent-DAPS and annealed SILO: ReSample's consistency step fits the measurement, silo_daps never
decodes inside its loop, DAPS decodes once per Langevin step (guidance toward the measurement: test_baselines),
readout operators are refused in one line, per-task options come from the prior card, and the frontier marks
its Pareto points."""

from __future__ import annotations

import json

import pytest
import torch

from silo.cards import PriorCard
from silo.degradations import load_task
from silo.errors import SiloError
from silo.samplers import SAMPLERS, Problem, SamplerSettings
from silo.samplers.registry import refusal
from silo.samplers.resample import consistency_steps, hard_consistency
from silo.testing import contract_operator, random_images

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(task: str = "sr4", seed: int = 3, batch: int = 1) -> Problem:
    x = random_images(batch, (32, 32), seed=seed)
    deg = load_task(task).degradation
    seeds = list(range(seed, seed + batch))
    params = deg.sample_params(x.shape, seeds)
    return Problem(deg, deg.add_noise(deg.A(x, params), seeds), params, seeds)


def _residual(prior, problem, z0):
    with torch.no_grad():
        return (problem.y - problem.degradation.A(prior.decode(z0).float(), problem.params)).flatten(1).norm(dim=1)


@pytest.mark.parametrize("task", ["sr4", "inpaint_center", "jpeg"])
def test_resample_consistency_step_lowers_the_measurement_residual(tiny_prior, task):
    problem = _problem(task, batch=2)
    z0 = torch.randn(2, tiny_prior.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    before = _residual(tiny_prior, problem, z0)
    z_star, used = hard_consistency(tiny_prior, problem, z0, iterations=30, lr=0.05)
    after = _residual(tiny_prior, problem, z_star)
    assert (after < 0.9 * before).all(), (before, after)
    assert used.tolist() == [30, 30]  # the tiny random prior never reaches the noise floor: bounded by iterations


def test_resample_consistency_stops_at_the_noise_level(tiny_prior):
    problem = _problem("sr4")
    problem.degradation.noise_sigma = 1e3  # any residual is under this noise: nothing to fit
    z0 = torch.randn(1, tiny_prior.latent_channels, 8, 8)
    z_star, used = hard_consistency(tiny_prior, problem, z0, iterations=30, lr=0.05)
    assert used.tolist() == [0] and torch.equal(z_star, z0)


def test_consistency_steps_sit_in_the_middle_third():
    assert consistency_steps(50, 10) == {16, 26}
    assert consistency_steps(3, 10) == {1}
    assert consistency_steps(1, 10) == {0}


class _Counting:
    """Counts calls of a prior's decode and encode during a sampler run."""

    def __init__(self, prior, monkeypatch):
        self.decode = self.encode = 0
        decode, encode = prior.decode, prior.encode

        def counted_decode(z):
            self.decode += 1
            return decode(z)

        def counted_encode(*a, **k):
            self.encode += 1
            return encode(*a, **k)

        monkeypatch.setattr(prior, "decode", counted_decode)
        monkeypatch.setattr(prior, "encode", counted_encode)


def test_silo_daps_never_calls_the_decoder_inside_its_loop(tiny_prior, monkeypatch):
    count = _Counting(tiny_prior, monkeypatch)
    seen = []
    SAMPLERS["silo_daps"](
        tiny_prior,
        _problem(),
        SamplerSettings(steps=6),
        operator=contract_operator(tiny_prior),
        show_progress=False,
        callback=seen.append,
        langevin_steps=4,
    )
    assert len(seen) == 6
    assert count.decode == 0 and count.encode == 1  # the measurement is encoded once; nothing is decoded


def test_daps_decodes_once_per_langevin_step(tiny_prior, monkeypatch):
    count = _Counting(tiny_prior, monkeypatch)
    SAMPLERS["daps"](tiny_prior, _problem(), SamplerSettings(steps=6), show_progress=False, langevin_steps=3)
    assert count.decode == 6 * 3


def test_silo_daps_refuses_a_readout_operator_in_one_line(tiny_prior):
    from silo.operators import ReadoutOperator
    from silo.operators.features import feature_channels

    readout = ReadoutOperator(
        latent_channels=tiny_prior.latent_channels,
        embedding_dim=tiny_prior.embedding_dim,
        feature_channels=feature_channels(tiny_prior.unet),
        bottleneck_channels=8,
        projection_dim=16,
        norm_groups=4,
        head_channels=(8, 8),
        norm_size=16,
    )
    why = refusal("silo_daps", load_task("sr4").degradation, readout)
    assert why is not None and "silo_daps" in why and "features" in why and "\n" not in why
    assert refusal("daps", load_task("jpeg").degradation) is None  # straight-through gradient, as Latent-DPS
    assert "linear" in refusal("psld", load_task("jpeg").degradation)


def test_prior_card_tunes_options_per_task(tmp_path):
    from silo.settings import resolve

    (tmp_path / "silo_prior.json").write_text(
        json.dumps({"name": "p", "method_options": {"ldps": {"inpaint_center": {"zeta": 1.5}}}})
    )
    card = PriorCard.read(tmp_path)
    tuned = resolve(load_task("inpaint_center"), {}, method="ldps", prior_card=card)
    assert tuned.method_options == {"zeta": 1.5}
    assert tuned.sources["method_options.zeta"] == "prior card p (tuned for inpaint_center)"
    other = resolve(load_task("sr4"), {}, method="ldps", prior_card=card)
    assert other.method_options == {"zeta": SAMPLERS["ldps"].options["zeta"]}
    assert other.sources["method_options.zeta"] == "default"
    asked = resolve(load_task("inpaint_center"), {"method_options": {"zeta": 3.0}}, method="ldps", prior_card=card)
    assert asked.method_options == {"zeta": 3.0} and asked.sources["method_options.zeta"] == "request"
    (tmp_path / "silo_prior.json").write_text(json.dumps({"method_options": {"ldps": {"sr4": {"zeta": "big"}}}}))
    with pytest.raises(SiloError, match="zeta must be a number"):
        PriorCard.read(tmp_path)


def test_pareto_front_marks_undominated_points():
    from silo.evaluation.frontier import frontier

    def row(method, steps, seconds, psnr):
        return {
            "task": "sr4",
            "method": method,
            "steps": steps,
            "start_strength": 1.0,
            "settings_key": "k",
            "n": 4,
            "metrics": {
                "seconds": {"mean": seconds, "ci95": 0.0},
                "psnr": {"mean": psnr, "ci95": 0.1},
                "ssim": {"mean": 0.5},
            },
        }

    table = {
        "rows": [
            row("silo[cnn]", 10, 1.0, 20.0),
            row("silo[cnn]", 50, 5.0, 22.0),
            row("ldps", 10, 2.0, 19.0),
            row("ldps", 50, 10.0, 23.0),
            row("daps", 50, 5.0, 21.0),
        ]
    }
    points = {(p["method"], p["steps"]): p for p in frontier(table)["tasks"]["sr4"]}
    assert {k for k, p in points.items() if p["on_front"]} == {("silo[cnn]", 10), ("silo[cnn]", 50), ("ldps", 50)}
    assert points[("ldps", 10)]["best_silo_at_or_below"] == "silo[cnn] 10 steps"
    assert points[("ldps", 10)]["lead_over_silo"] == pytest.approx(-1.0)
    assert points[("ldps", 50)]["lead_over_silo"] == pytest.approx(1.0)


def test_evaluate_sweeps_steps_into_a_frontier(tiny_prior, tmp_path):
    from PIL import Image

    from silo.cli import main

    prior_dir = tmp_path / "prior"
    tiny_prior.save_pretrained(prior_dir)
    x = random_images(1, (32, 32), seed=2)[0]
    Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(tmp_path / "a.png")
    out = tmp_path / "e"
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "a.png"),
                "--prior",
                str(prior_dir),
                "--tasks",
                "sr4",
                "--methods",
                "ldps,daps",
                "--sweep-steps",
                "2,3",
                "--method-option",
                "daps.langevin_steps=1",
                "--no-progress",
                "--no-lpips",
                "--no-plots",
                "--save",
                "none",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    front = json.loads((out / "frontier.json").read_text())["tasks"]["sr4"]
    assert sorted((p["method"].split("(")[0], p["steps"]) for p in front) == [
        ("daps", 2),
        ("daps", 3),
        ("ldps", 2),
        ("ldps", 3),
    ]
    assert any(p["on_front"] for p in front)
    assert "| method | steps | start |" in (out / "frontier.md").read_text()
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "a.png"),
                "--prior",
                str(prior_dir),
                "--sweep-steps",
                "2,x",
                "--output-dir",
                str(out),
            ]
        )
        == 2
    )
