"""`silo evaluate` and `silo summarize` end to end on the tiny random prior: logs, table, resumption, method
options, a 2-process run matching a 1-process run, and summarize reproducing the table from the logs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from silo.cli import main
from silo.errors import SiloError
from silo.evaluation.aggregate import mean_ci
from silo.evaluation.options import method_options, parse_method_options
from silo.samplers.latent_dps import DEFAULT_ZETA
from silo.testing import random_images, tiny_prior

SIZE = 32
#: quality columns that must not depend on how the work was split (timings and memory naturally do)
QUALITY = ("psnr", "ssim", "psnr_y", "consistency_psnr", "consistency_psnr_y")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from silo.operators import CNNOperator

    root = tmp_path_factory.mktemp("evaluate")
    prior = tiny_prior()
    prior.save_pretrained(root / "prior")
    torch.manual_seed(0)
    CNNOperator(
        latent_channels=4, embedding_dim=prior.embedding_dim, channels=(8, 8, 8, 8), norm_size=16
    ).save_pretrained(root / "cnn")
    (root / "photos").mkdir()
    for i in range(2):
        x = random_images(1, (SIZE, SIZE), seed=i)[0]
        Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(root / "photos" / f"img{i}.png")
    return root


def argv(setup, out, *extra):
    return [
        "evaluate",
        str(setup / "photos"),
        "--prior",
        str(setup / "prior"),
        "--operator",
        str(setup / "cnn"),
        "--tasks",
        "sr4,jpeg",
        "--methods",
        "silo,ldps,psld",
        "--steps",
        "2",
        "--no-progress",
        "--no-lpips",
        "--output-dir",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def single(setup):
    out = setup / "single"
    assert main(argv(setup, out)) == 0
    return out


def rows(out: Path) -> dict:
    table = json.loads((out / "aggregate.json").read_text())
    return {(r["task"], r["method"]): r for r in table["rows"]}


def test_logs_and_table(single):
    logs = sorted((single / "runs").glob("*.json"))
    assert len(logs) == 2 * (3 + 2)  # 2 images x (sr4: silo, ldps, psld + jpeg: silo, ldps)
    log = json.loads(next((single / "runs").glob("img0_sr4_ldps_s1000_*.json")).read_text())
    assert log["method"] == "ldps" and log["method_options"] == {"zeta": DEFAULT_ZETA}
    for key in ("psnr", "ssim", "consistency_psnr", "seconds", "seconds_per_step", "peak_memory_bytes"):
        assert isinstance(log["metrics"][key], (int, float)), key
    assert log["memory"]["memory_kind"] in ("cpu_peak_rss", "cuda_max_allocated")
    assert (single / "runs" / log["reference_image"]).is_file()
    table = rows(single)
    assert set(table) == {
        ("sr4", "silo[cnn]"),
        ("sr4", "ldps"),
        ("sr4", "psld"),
        ("jpeg", "silo[cnn]"),
        ("jpeg", "ldps"),
    }
    row = table[("sr4", "ldps")]
    assert row["n"] == 2 and row["steps"] == 2 and row["metrics"]["psnr"]["n"] == 2
    assert row["metrics"]["psnr"]["ci95"] > 0
    md = (single / "aggregate.md").read_text()
    assert "| sr4 | psld |" in md and "±" in md
    header = (single / "aggregate.csv").read_text().splitlines()[0].split(",")
    assert {"task", "method", "psnr_mean", "psnr_ci95", "seconds_per_step_mean", "peak_memory_bytes_mean"} <= set(
        header
    )
    assert json.loads((single / "aggregate.json").read_text())["fid_status"].startswith(("unavailable", "available"))


def test_plots_when_matplotlib_is_installed(single):
    pytest.importorskip("matplotlib")
    assert (single / "plots" / "psnr_vs_time.png").is_file()


def test_resume_skips_finished_results(setup, single, monkeypatch, capsys):
    import silo.pipeline

    calls = []
    real = silo.pipeline.restore
    monkeypatch.setattr(silo.pipeline, "restore", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(argv(setup, single)) == 0
    assert calls == [] and "already done 10" in capsys.readouterr().err
    stem = next((single / "runs").glob("img1_jpeg_silo_s1000_*.json")).stem
    before = json.loads((single / "runs" / f"{stem}.json").read_text())
    for suffix in (".json", ".png"):
        (single / "runs" / f"{stem}{suffix}").unlink()
    assert main(argv(setup, single)) == 0
    assert len(calls) == 1
    after = json.loads((single / "runs" / f"{stem}.json").read_text())
    assert after["metrics"]["psnr"] == pytest.approx(before["metrics"]["psnr"], abs=1e-4)


def test_summarize_reproduces_the_table(single, tmp_path):
    assert main(["summarize", str(single), "--output-dir", str(tmp_path), "--no-plots"]) == 0
    for name in ("aggregate.json", "aggregate.csv", "aggregate.md"):
        assert (tmp_path / name).read_text() == (single / name).read_text(), name


def test_two_processes_give_the_same_table_as_one(setup, single):
    out = setup / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "silo",
        *argv(setup, out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {json.loads(p.read_text())["evaluation"]["rank"] for p in (out / "runs").glob("*.json")}
    assert ranks == {0, 1}
    one, two = rows(single), rows(out)
    assert one.keys() == two.keys()
    for key in one:
        assert one[key]["n"] == two[key]["n"]
        for metric in QUALITY:
            assert two[key]["metrics"][metric]["mean"] == pytest.approx(one[key]["metrics"][metric]["mean"], abs=1e-3)


def test_method_options_sweep(setup, tmp_path):
    args = argv(setup, tmp_path, "--method-option", "ldps.zeta=0.5,2", "--method-option", "silo.eta=0.25")
    args[args.index("--tasks") + 1] = "sr4"
    args[args.index("--methods") + 1] = "silo,ldps"
    assert (
        main(
            args + ["--photos", "heldout", "--photo-count", "1", "--photo-size", "32"] if _heldout_available() else args
        )
        == 0
    )
    table = rows(tmp_path)
    assert {m for _, m in table} == {"ldps(zeta=0.5)", "ldps(zeta=2)", "silo[cnn](eta=0.25)"}
    log = json.loads(next((tmp_path / "runs").glob("img0_sr4_ldps-zeta2_s1000_*.json")).read_text())
    assert log["method_options"] == {"zeta": 2.0}
    silo_log = json.loads(next((tmp_path / "runs").glob("img0_sr4_silo-eta0.25_s1000_*.json")).read_text())
    assert silo_log["settings"]["eta"] == 0.25


def _heldout_available() -> bool:
    from silo.runs.items import photo_items

    try:
        photo_items("heldout", 1, 32)
    except SiloError:
        return False
    return True


def test_option_parsing_errors():
    assert method_options("psld") == {"zeta": DEFAULT_ZETA, "gamma": 0.001}
    assert [c.option_dict for c in parse_method_options(["zeta=1,2"], ["ldps", "psld", "silo"])] == [
        {"zeta": 1.0},
        {"zeta": 2.0},
        {"zeta": 1.0},
        {"zeta": 2.0},
        {},
    ]
    for spec, msg in [
        ("gamma=1", "no selected method"),
        ("psld.zeta=1", "not among"),
        ("ldps.eta=1", "takes zeta"),
        ("ldps.zeta=x", "numbers"),
        ("zeta", "expected"),
    ]:
        with pytest.raises(SiloError, match=msg):
            parse_method_options([spec], ["ldps", "silo"])


def test_bad_inputs_are_clear_errors(setup, tmp_path, capsys):
    assert main(argv(setup, tmp_path, "--methods", "nope")) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["evaluate", "--prior", str(setup / "prior"), "--output-dir", str(tmp_path)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["summarize", str(tmp_path)]) == 2
    assert "no per-image logs" in capsys.readouterr().err


def test_mean_ci():
    stat = mean_ci([1.0, 2.0, 3.0])
    assert stat["mean"] == 2.0 and stat["n"] == 3
    assert stat["ci95"] == pytest.approx(4.302652729911275 / 3**0.5)
    assert mean_ci([5.0])["ci95"] is None and mean_ci([])["mean"] is None


def test_training_crops_are_deterministic_and_come_from_training_photos(monkeypatch):
    import numpy as np

    from silo.data import photos
    from silo.runs.items import photo_items

    fake = {"a": np.full((80, 120, 3), 10, np.uint8), "b": np.full((100, 100, 3), 200, np.uint8)}
    monkeypatch.setattr(photos, "training_photos", lambda verify=True: fake)
    monkeypatch.setattr(photos, "heldout_photos", lambda verify=True: pytest.fail("held-out photos read for tuning"))
    items = photo_items("train", 4, 32)
    assert [i.name for i in items] == [f"silo-tiny-train-32px-{i:03d}" for i in range(4)]
    first = [i.load() for i in items]
    assert all(x.shape == (1, 3, 32, 32) for x in first)
    assert {round(float(x.mean()), 2) for x in first} <= {round(10 / 127.5 - 1, 2), round(200 / 127.5 - 1, 2)}
    assert all(torch.equal(a, b.load()) for a, b in zip(first, photo_items("train", 4, 32)))


def test_fid_is_reported_unavailable_without_local_weights(tmp_path):
    from silo.evaluation.fid import find_inception_weights

    path, status = find_inception_weights(tmp_path / "missing.pth")
    assert path is None and status.startswith("unavailable: ")


def test_naive_estimate_is_the_measurement_at_image_size(setup, tmp_path):
    from silo.degradations.tasks import load_task
    from silo.pipeline import restore
    from silo.priors import Prior
    from silo.samplers import SamplerSettings

    prior = Prior.from_pretrained(str(setup / "prior"))
    x = random_images(2, (SIZE, SIZE), seed=5)
    from silo.degradations.resize import imresize

    for name in ("sr4", "gaussian_blur", "inpaint_center"):
        task = load_task(name)
        res = restore(prior, task, SamplerSettings(steps=3), [1, 2], reference=x, method="naive")
        assert res.steps == 0 and res.output.shape == x.shape
        y = res.measurement
        if name == "sr4":  # MATLAB-bicubic up-sampling of the 8x8 measurement
            assert y.shape[-1] == SIZE // 4
            assert torch.allclose(res.output, imresize(y, (SIZE, SIZE)).clamp(-1, 1))
        elif name == "gaussian_blur":  # the blurred image itself
            assert torch.equal(res.output, y.clamp(-1, 1))
        else:  # the masked image: zeros in the hole, the noisy measurement elsewhere
            mask = task.degradation.mask(res.params)
            assert torch.all(res.output * (1 - mask) == 0) and torch.equal(res.output * mask, y.clamp(-1, 1) * mask)
    args = argv(setup, tmp_path)
    args[args.index("--methods") + 1] = "naive,silo"
    assert main(args) == 0
    table = rows(tmp_path)
    assert {m for _, m in table} == {"naive", "silo[cnn]"}
    log = json.loads(next((tmp_path / "runs").glob("img0_sr4_naive_*.json")).read_text())
    assert log["metrics"]["seconds_per_step"] is None and log["metrics"]["psnr"] > 5
    assert log["settings"]["steps"] == 0 and log["settings"]["eta"] is None  # it samples nothing


def test_baselines_alone_start_where_they_would_beside_silo(tmp_path):
    """The operator card's warm start applies to every method of a run, with or without SILO in it."""
    import torch as _torch

    from silo.degradations.tasks import load_task
    from silo.models import default_operator_path
    from silo.runs.models import Models
    from silo.runs.restore import build_setup

    task = load_task("sr4")
    card = json.loads((default_operator_path("sr4") / "model_card.json").read_text())
    models = Models.load(None, _torch.device("cpu"), _torch.float32)
    alone = build_setup(models, task, "ldps", {}, {})
    assert alone.operator is None and alone.resolved.settings.start_strength == card["recommended_start_strength"] < 1.0
    assert alone.resolved.sources["start_strength"] == f"operator card {default_operator_path('sr4').name}"
    beside = build_setup(models, task, "silo", {}, {})
    assert beside.resolved.settings.start_strength == alone.resolved.settings.start_strength
    assert Models(models.prior, "elsewhere", models.device).operator_card(task, "ldps").recommended_eta is None


def test_param_draws_measure_each_image_under_several_kernels(setup, tmp_path, capsys):
    """--param-draws 3: every image three times, named NAME, NAME-draw1, NAME-draw2, each under its own motion
    kernel (so the naive PSNR differs between draws of one image); K < 1 is refused."""
    args = argv(setup, tmp_path, "--param-draws", "3")
    args[args.index("--methods") + 1] = "naive"
    args[args.index("--tasks") + 1] = "motion_blur,sr4"
    assert main(args) == 0
    assert rows(tmp_path)[("sr4", "naive")]["n"] == 2  # no random parameters: one draw, not three copies
    logs = {
        p.name.split("_motion_blur")[0]: json.loads(p.read_text())
        for p in (tmp_path / "runs").glob("*motion_blur*.json")
    }
    assert sorted(logs) == ["img0", "img0-draw1", "img0-draw2", "img1", "img1-draw1", "img1-draw2"]
    psnrs = [logs[n]["metrics"]["psnr"] for n in ("img0", "img0-draw1", "img0-draw2")]
    assert len({round(v, 6) for v in psnrs}) == 3
    assert rows(tmp_path)[("motion_blur", "naive")]["n"] == 6
    assert main(argv(setup, tmp_path / "bad", "--param-draws", "0")) == 2
    assert "--param-draws must be at least 1" in capsys.readouterr().err
