"""The shipped silo-tiny weights: every task restores a fixed set of held-out crops better than the
measurement alone wherever the model card's table claims a gain, and loses no more than 1 dB beyond the loss
the card reports elsewhere, with the shipped defaults (operator kind, steps, eta, warm start, scheduler),
offline on CPU. The crops are committed under ``tests/data/`` (``scripts/make_test_data.py``).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from silo.models import default_prior_path, shipped_card

CARD = shipped_card()
TASKS = sorted(CARD["default_operator"]) if CARD else []
N_CROPS, STEPS_CAP = 8, 100


@pytest.fixture(scope="module")
def prior():
    from silo.runs.models import load_prior

    return load_prior(default_prior_path(), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def crops():
    """The first held-out 64 px crops, committed as PNGs (``python -m pytest -m data`` checks them)."""
    import numpy as np
    from PIL import Image

    from conftest import DATA

    files = sorted((DATA / "heldout-crops-64").glob("crop-*.png"))[:N_CROPS]
    assert len(files) == N_CROPS, f"expected {N_CROPS} crops under {DATA / 'heldout-crops-64'}"
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def test_card_lists_every_task_and_a_measured_table():
    assert CARD is not None, "no silo-tiny model card shipped"
    table = CARD["evaluation"]["heldout_crops_64"]["table"]
    assert set(table) == set(TASKS) and CARD["evaluation"]["heldout_crops_64"]["n"] >= 100


@pytest.mark.parametrize("task_name", TASKS)
def test_shipped_restoration_beats_the_measurement_alone(task_name, prior, crops):
    from dataclasses import replace

    from silo.degradations.tasks import load_task
    from silo.evaluation.metrics import psnr
    from silo.pipeline import restore
    from silo.runs.models import Models
    from silo.runs.restore import build_setup

    task = load_task(task_name)
    kind = CARD["default_operator"][task_name]
    models = Models(prior, str(default_prior_path()), prior.device, shipped_prior=True)
    # the settings `silo restore --task TASK` uses with nothing else given, the steps capped for CI
    setup = build_setup(models, task, "silo", {}, {})
    assert setup.kind == kind
    settings = setup.resolved.at_size(64, 64).settings
    settings = replace(settings, steps=min(settings.steps, STEPS_CAP))
    seeds = list(range(1000, 1000 + N_CROPS))
    naive = restore(prior, task, settings, seeds, reference=crops, method="naive", show_progress=False)
    silo = restore(prior, task, settings, seeds, reference=crops, operator=setup.operator, show_progress=False)
    gain = (sum(psnr(silo.output, crops)) - sum(psnr(naive.output, crops))) / N_CROPS
    row = CARD["evaluation"]["heldout_crops_64"]["table"][task_name]
    card_gain = row[f"silo[{kind}]"]["psnr"] - row["naive"]["psnr"]
    if card_gain > 0:
        assert gain > 0, f"{task_name}: SILO {gain:+.2f} dB vs naive, the card claims {card_gain:+.2f} dB"
    else:  # the card reports a loss (sr4, sr8, motion_blur): it must not grow by more than 1 dB
        assert gain > card_gain - 1.0, (
            f"{task_name}: SILO {gain:+.2f} dB vs naive, the card reports {card_gain:+.2f} dB"
        )


def test_models_lists_the_card_defaults_and_every_operator(capsys):
    from silo.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "silo-tiny in" in out
    assert (
        f"sampling defaults: {CARD['default_steps']} steps, {CARD['default_scheduler'].upper()}, measurement clamp off"
        in out
    )
    for task, kind in CARD["default_operator"].items():
        assert f"{task}-{kind} (default):" in out
