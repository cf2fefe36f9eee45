"""One precedence for every front door: request > preset > operator card > prior card > task > default,
row by row as silo.settings documents it, with the source of every value."""

from __future__ import annotations

import json

import pytest

from silo.cards import OperatorCard, PriorCard
from silo.degradations.tasks import load_task
from silo.errors import SiloError
from silo.presets import PRESETS, get_preset
from silo.settings import resolve

PRESET = get_preset(next(iter(PRESETS)))


def prior_card(tmp_path, **values) -> PriorCard:
    folder = tmp_path / "prior"
    folder.mkdir(exist_ok=True)
    (folder / "silo_prior.json").write_text(json.dumps({"name": "p", **values}))
    return PriorCard.read(folder)


def operator_card(tmp_path, **values) -> OperatorCard:
    folder = tmp_path / "op"
    folder.mkdir(exist_ok=True)
    (folder / "model_card.json").write_text(json.dumps(values))
    return OperatorCard.read(folder)


def test_measurement_clamp_request_then_preset_then_prior_card_then_task(tmp_path):
    sr4, jpeg = load_task("sr4"), load_task("jpeg")  # the tasks clamp / do not clamp

    def clamp(task=sr4, preset=None, card=None, **request):
        r = resolve(task, request, preset=preset, prior_card=card)
        return r.settings.clamp_measurement, r.sources["clamp_measurement"]

    assert clamp() == (True, "task sr4") and clamp(jpeg) == (False, "task jpeg")
    off = prior_card(tmp_path, clamp_measurement=False)
    assert clamp(card=off) == (False, "prior card p") and clamp(jpeg, card=off)[0] is False
    assert clamp(card=off, clamp_measurement=True) == (True, "request")
    on = prior_card(tmp_path, clamp_measurement=True)
    assert clamp(jpeg, card=on) == (True, "prior card p")
    assert PRESET.clamp is False and clamp(card=on, preset=PRESET) == (False, f"preset {PRESET.name}")
    assert clamp(card=on, clamp_measurement=False)[0] is False
    with pytest.raises(SiloError, match="clamp_measurement must be true or false"):
        prior_card(tmp_path, clamp_measurement="no")


def test_eta_request_then_preset_then_operator_card_then_task(tmp_path):
    task = load_task("sr4")  # the task's own eta is 0.5
    card = operator_card(tmp_path, recommended_eta=0.7)

    def eta(preset=None, op=None, **request):
        return resolve(task, request, preset=preset, operator_card=op).settings.eta

    assert eta() == task.sampling["eta"] == 0.5
    assert eta(op=card) == 0.7
    assert eta(op=OperatorCard.read(tmp_path / "published.pt")) == 0.5  # a .pt file has no card
    assert eta(preset=PRESET, op=card) == PRESET.eta
    assert eta(preset=PRESET, op=card, eta=0.125) == 0.125
    assert resolve(task, operator_card=card).settings.eta_reference_size is None  # no size: eta as given
    sized = operator_card(tmp_path, recommended_eta=0.7, recommended_eta_size=64)
    r = resolve(task, operator_card=sized)
    assert r.settings.eta_reference_size == 64 and r.sources["eta"] == "operator card op"
    used = r.at_size(256, 256)  # the value as used, after scaling to the image's side, with its source
    assert used.settings.eta == pytest.approx(2.8) and used.settings.eta_reference_size is None
    assert "0.7 tuned at 64 px" in used.sources["eta"]
    assert resolve(task, {"eta": 0.7}, operator_card=sized).settings.eta_reference_size is None
    with pytest.raises(SiloError, match="recommended_eta must be a number"):
        operator_card(tmp_path, recommended_eta="fast")


def test_seed_prior_card_and_start_strength_rows(tmp_path):
    task = load_task("sr4")
    card = prior_card(tmp_path, default_steps=50, default_scheduler="ddim", default_start_strength=0.3)
    op = operator_card(tmp_path, recommended_start_strength=0.02)
    r = resolve(task, prior_card=card, operator_card=op)
    assert (r.settings.steps, r.settings.scheduler, r.settings.start_strength) == (50, "ddim", 0.02)
    assert r.sources["start_strength"] == "operator card op" and r.sources["steps"] == "prior card p"
    assert resolve(task, prior_card=card).settings.start_strength == 0.3
    # an explicit seed beats the preset's, even the default value 1000
    assert resolve(task, {"seed": 1000}, preset=PRESET).sources["seed"] == "request"
    assert resolve(task, {"seed": 7}, preset=PRESET).seed == 7
    # a preset does not switch another prior's card off: where the preset is silent, the card speaks
    with_preset = resolve(task, preset=PRESET, prior_card=card)
    assert with_preset.settings.steps == PRESET.steps and with_preset.settings.start_strength == 1.0
    assert with_preset.sources["steps"] == f"preset {PRESET.name}"
    assert resolve(task, {"steps": 3}, prior_card=card).sources["steps"] == "request"


def test_method_options_and_bad_values(tmp_path):
    task = load_task("sr4")
    r = resolve(task, {"method_options": {"zeta": 0.5}}, method="ldps")
    assert r.method_options == {"zeta": 0.5} and r.sources["method_options.zeta"] == "request"
    assert resolve(task, method="psld").method_options == {"zeta": 0.125, "gamma": 0.001}
    assert resolve(task, {"method_options": {"eta": 0.3}}).settings.eta == 0.3  # SILO's step is the eta setting
    with pytest.raises(SiloError, match="ldps takes zeta"):
        resolve(task, {"method_options": {"gamma": 1}}, method="ldps")
    with pytest.raises(SiloError, match="start strength must be in"):
        resolve(task, {"start_strength": 0})
    with pytest.raises(SiloError, match="unknown setting"):
        resolve(task, {"etaa": 1})
    with pytest.raises(SiloError, match="default_steps must be an integer"):
        prior_card(tmp_path, default_steps=2.5)
