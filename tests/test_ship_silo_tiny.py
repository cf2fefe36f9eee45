"""scripts/ship_silo_tiny.py on a stand-in run folder (tiny random prior and operators): it stages fp16
weights, measures every task against the naive estimate, picks an operator kind per task, writes the model
card, plot and grid, and the result is what `silo restore` loads by default."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from silo.testing import tiny_prior

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def stand_in_photos(monkeypatch):
    """Smooth seeded stand-ins for the held-out photos: the script is tested, not the Debian packages."""
    import zlib

    import numpy as np

    from silo.data import photos

    def read_photo(photo, verify=True):
        rng = np.random.default_rng(zlib.crc32(photo.name.encode()))
        yy, xx = np.mgrid[:320, :384] / 320
        base = np.stack([np.sin(rng.uniform(2, 8) * xx + rng.uniform(0, 6) * yy + c) for c in range(3)], -1)
        return ((base * 0.4 + 0.5 + 0.03 * rng.standard_normal(base.shape)).clip(0, 1) * 255).astype(np.uint8)

    monkeypatch.setattr(photos, "read_photo", read_photo)


def load_script():
    spec = importlib.util.spec_from_file_location("ship_silo_tiny", ROOT / "scripts" / "ship_silo_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_runs(root: Path, ship) -> Path:
    from silo.training.operator import build_operator

    prior = tiny_prior()
    prior.save_pretrained(root / "prior")
    (root / "prior" / "silo_prior.json").write_text(
        json.dumps(
            {
                "vae": {
                    "parameters": 1,
                    "latent_channels": 4,
                    "downsampling": 8,
                    "step": 1,
                    "heldout_psnr": 10.0,
                    "heldout_ssim": 0.1,
                },
                "unet": {"parameters": 1, "step": 1, "heldout_loss": 1.0},
            }
        )
    )
    for task in ship.TASKS:
        for kind in ship.KINDS:
            torch.manual_seed(len(task))
            overrides = (
                {"channels": [8, 8, 8, 8]}
                if kind == "cnn"
                else {"projection_dim": 16, "bottleneck_channels": 8, "norm_groups": 4, "head_channels": [8, 8]}
            )
            op = build_operator(kind, prior, 32, task == "inpaint_random", overrides)
            out = root / "operators" / f"{task}-{kind}"
            op.save_pretrained(str(out))
            (out / "model_card.json").write_text(
                json.dumps(
                    {
                        "task": task,
                        "kind": kind,
                        "steps": 1,
                        "final_validation_loss": 0.5,
                        "first_batch_per_process": [[]],
                    }
                )
            )
    return root


def test_ship_writes_card_tables_and_the_default_restore_uses_it(tmp_path, monkeypatch, capsys):
    ship = load_script()
    runs = fake_runs(tmp_path / "runs", ship)
    dest, images = tmp_path / "pkg" / "silo-tiny", tmp_path / "images"
    torch.set_num_threads(1)
    assert (
        ship.main(
            [
                "--runs",
                str(runs),
                "--dest",
                str(dest),
                "--images",
                str(images),
                "--steps",
                "2",
                "--crops",
                "2",
                "--curve-crops",
                "1",
                "--curve-steps",
                "1,2",
                "--tune-crops",
                "2",
                "--etas",
                "0.3,0.7",
                "--strengths",
                "0.5,1",
            ]
        )
        == 0
    )
    card = json.loads((dest / "model_card.json").read_text())
    assert set(card["default_operator"]) == set(ship.TASKS)
    assert set(card["default_operator"].values()) <= set(ship.KINDS)
    table = card["evaluation"]["heldout_crops_64"]["table"]
    for task in ship.TASKS:  # each chosen kind is the one with the higher measured PSNR
        psnr = {k: table[task][f"silo[{k}]"]["psnr"] for k in ship.KINDS}
        assert psnr[card["default_operator"][task]] == max(psnr.values())
        assert table[task]["naive"]["psnr"] > 0
    assert [p["steps"] for p in card["evaluation"]["steps_curve"]["points"]] == [1, 2]
    assert (images / "silo-tiny-steps.png").stat().st_size > 0 and (images / "silo-tiny-tasks.png").stat().st_size > 0
    weights = next((dest / "operators" / "sr4-cnn").glob("*.safetensors"))
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float16 for t in load_file(str(weights)).values())
    op_card = json.loads((dest / "operators" / "sr4-cnn" / "model_card.json").read_text())
    assert "first_batch_per_process" not in op_card
    # eta and warm start: the best of the sweep on training crops, then used by the held-out evaluation
    sweep = op_card["eta_sweep"]["psnr"]
    assert len(sweep) == 4
    best = f"start_strength={op_card['recommended_start_strength']:g},eta={op_card['recommended_eta']:g}"
    assert sweep[best] == max(sweep.values())
    heldout_log = json.loads(next((runs / "ship").glob("*/crops-cnn/runs/*_sr4_silo_*.json")).read_text())
    assert heldout_log["settings"]["eta"] == op_card["recommended_eta"]
    assert heldout_log["settings"]["start_strength"] == op_card["recommended_start_strength"]
    assert heldout_log["settings"]["scheduler"] == "ddim"
    assert heldout_log["settings"]["clamp_measurement"] is False  # the prior card's, over sr4's own
    assert "| sr4 |" in capsys.readouterr().out
    prior_card = json.loads((dest / "prior" / "silo_prior.json").read_text())
    assert prior_card["default_steps"] == 2 and prior_card["clamp_measurement"] is False

    # the shipped folder is what `silo restore` uses with no --prior/--operator
    import silo.models
    from silo.cli import main

    monkeypatch.setattr(silo.models, "shipped_root", lambda: dest)
    assert silo.models.default_operator_path("sr4") == dest / "operators" / f"sr4-{card['default_operator']['sr4']}"
    out = tmp_path / "restored"
    assert (
        main(
            [
                "restore",
                "--simulate",
                "--example",
                "astronaut",
                "--task",
                "sr4",
                "--output-dir",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    log = json.loads(next(out.glob("*.json")).read_text())
    assert log["settings"]["steps"] == 2 and log["metrics"]["psnr"] > 0
    chosen = json.loads((silo.models.default_operator_path("sr4") / "model_card.json").read_text())
    # the operator card's step size by default, logged as used: scaled from the side it was tuned at to 256 px
    assert log["settings"]["eta"] == pytest.approx(chosen["recommended_eta"] * 256 / chosen["recommended_eta_size"])
    assert log["setting_sources"]["eta"].startswith(f"operator card sr4-{card['default_operator']['sr4']}")
    assert log["settings"]["start_strength"] == chosen["recommended_start_strength"]
    assert log["settings"]["scheduler"] == "ddim"  # the prior card's default scheduler
    assert (
        main(
            [
                "restore",
                "--simulate",
                "--example",
                "astronaut",
                "--task",
                "sr4",
                "--output-dir",
                str(out / "e"),
                "--no-progress",
                "--eta",
                "0.125",
                "--steps",
                "1",
            ]
        )
        == 0
    )
    assert json.loads(next((out / "e").glob("*.json")).read_text())["settings"]["eta"] == 0.125
