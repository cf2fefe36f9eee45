"""Every front door (`silo restore`, `silo evaluate`, `silo.restore`) resolves the same settings and makes the
same pixels for every registered method; results are keyed by what made them; no module outside silo.cli
imports silo.cli."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import silo
from silo.cli import main
from silo.samplers.registry import method_names
from silo.testing import random_images, save_carded_models

SRC = Path(silo.__file__).parent


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_prior):
    """A tiny prior with a card, an operator with a card (eta tuned at 32 px, a warm start), one photo."""
    root = tmp_path_factory.mktemp("doors")
    save_carded_models(tiny_prior, root)
    x = random_images(1, (48, 48), seed=5)[0]
    Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(root / "photo.png")
    return root


def only(folder: Path, pattern: str = "*.json") -> Path:
    (path,) = sorted(folder.glob(pattern))
    return path


@pytest.mark.parametrize("method", method_names())
def test_restore_evaluate_and_python_agree(files, tmp_path, method):
    common = ["--prior", str(files / "prior"), "--operator", str(files / "op"), "--no-progress", "--no-lpips"]
    assert (
        main(
            [
                "restore",
                str(files / "photo.png"),
                "--simulate",
                "--task",
                "sr4",
                "--method",
                method,
                "--output-dir",
                str(tmp_path / "r"),
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                str(files / "photo.png"),
                "--tasks",
                "sr4",
                "--methods",
                method,
                "--save",
                "image",
                "--no-fid",
                "--no-plots",
                "--output-dir",
                str(tmp_path / "e"),
                *common,
            ]
        )
        == 0
    )
    results = silo.restore(
        files / "photo.png",
        task="sr4",
        method=method,
        simulate=True,
        prior=files / "prior",
        operator=files / "op",
        output_dir=tmp_path / "p",
        show_progress=False,
        lpips=False,
    )
    assert len(results) == 1, [r.path for r in results]
    (result,) = results
    logs = [json.loads(p.read_text()) for p in (only(tmp_path / "r"), only(tmp_path / "e" / "runs"), result.path)]
    for log in logs[1:]:
        assert log["settings"] == logs[0]["settings"] and log["setting_sources"] == logs[0]["setting_sources"]
        assert log["identity"]["key"] == logs[0]["identity"]["key"] and log["image_seed"] == logs[0]["image_seed"]
        assert log["metrics"]["psnr"] == pytest.approx(logs[0]["metrics"]["psnr"], abs=1e-9)
    images = [
        np.asarray(Image.open(p))
        for p in (
            only(tmp_path / "r", "*_s1000_????????.png"),
            only(tmp_path / "e" / "runs", "*.png"),
            result.path.with_suffix(".png"),
        )
    ]
    assert all(np.array_equal(images[0], im) for im in images[1:])
    settings, sources = logs[0]["settings"], logs[0]["setting_sources"]
    if method != "naive":  # every method starts where SILO starts: the operator card's warm start, the prior's steps
        assert (settings["steps"], settings["scheduler"], settings["start_strength"]) == (3, "ddim", 0.7)
        assert sources["start_strength"] == "operator card op" and sources["steps"].startswith("prior card")
    if method == "silo":  # the eta as used: the card's 0.4, tuned at 32 px, scaled to 48 px
        assert settings["eta"] == pytest.approx(0.6) and "0.4 tuned at 32 px" in sources["eta"]


def test_changed_settings_make_a_new_result_and_summarize_groups_them(files, tmp_path, capsys):
    args = [
        str(files / "photo.png"),
        "--simulate",
        "--task",
        "sr4",
        "--prior",
        str(files / "prior"),
        "--operator",
        str(files / "op"),
        "--no-progress",
        "--no-lpips",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(["restore", *args]) == 0
    assert main(["restore", *args]) == 0
    assert "restored 0, skipped 1" in capsys.readouterr().err
    assert main(["restore", *args, "--eta", "0.9"]) == 0
    logs = sorted(tmp_path.glob("*.json"))
    assert len(logs) == 2 and "restored 1, skipped 0" in capsys.readouterr().err
    etas = sorted(json.loads(p.read_text())["settings"]["eta"] for p in logs)
    assert etas == [pytest.approx(0.6), 0.9]
    assert main(["summarize", str(tmp_path), "--no-plots", "--no-fid"]) == 0
    out = capsys.readouterr()
    assert "grouped 2 results into 2 rows" in out.err
    rows = json.loads((tmp_path / "aggregate.json").read_text())["rows"]
    assert len(rows) == 2 and len({r["settings_key"] for r in rows}) == 2
    assert main(["restore", *args, "--grad-clamp", "0.5"]) == 0  # same method label, other settings
    assert main(["summarize", str(tmp_path), "--no-plots", "--no-fid"]) == 0
    out = capsys.readouterr()
    assert "grouped 3 results into 3 rows" in out.err and "| settings |" in out.out


def test_two_images_never_share_a_noise_field(files, tmp_path):
    x = torch.cat([random_images(1, (32, 32), seed=1)] * 2)
    x[1] = x[1].flip(-1)
    results = silo.restore(x, task="sr4", method="ldps", simulate=True, prior=files / "prior", show_progress=False)
    assert results[0].log["image_seed"] != results[1].log["image_seed"]
    again = silo.restore(x[:1], task="sr4", method="ldps", simulate=True, prior=files / "prior", show_progress=False)
    assert torch.equal(again[0].image, results[0].image)  # a rerun reproduces exactly, alone or in a batch


def test_nothing_outside_the_cli_imports_it():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "cli" and path.parent.parent == SRC:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            offenders += [
                f"{path.relative_to(SRC)}: {n}" for n in names if n == "silo.cli" or n.startswith("silo.cli.")
            ]
    assert not [o for o in offenders if not o.startswith("__main__.py")], offenders


def test_every_method_starts_where_silo_starts_on_the_shipped_prior():
    """sr4's default operator is a readout, which x0-space SILO cannot feed (it takes the CNN operator); its
    warm start and steps are still the ones SILO uses on the task."""
    from silo.degradations.tasks import load_task
    from silo.runs.models import Models
    from silo.runs.restore import build_setup

    models = Models.load(None, torch.device("cpu"), torch.float32)
    task = load_task("sr4")
    setups = {m: build_setup(models, task, m, {}, {}) for m in ("silo", "silo_x0", "ldps")}
    assert setups["silo"].kind == "readout" and setups["silo_x0"].kind == "cnn"
    starts = {
        m: (s.resolved.settings.start_strength, s.resolved.settings.steps, s.resolved.sources["start_strength"])
        for m, s in setups.items()
    }
    assert len(set(starts.values())) == 1, starts


def test_results_come_back_in_input_order_and_a_failing_batch_costs_only_its_bad_image(
    files, tmp_path, monkeypatch, capsys
):
    import silo.pipeline

    x = torch.cat([random_images(1, (32, 32), seed=s) for s in (1, 2, 3)])
    x[1] = 0.5  # the image the failure is tied to
    real = silo.pipeline.restore

    def flaky(*args, **kwargs):
        images = kwargs["reference"]
        if any(bool((im == 0.5).all()) for im in images):
            raise RuntimeError("boom")  # not a SiloError: it must still cost only this image
        return real(*args, **kwargs)

    monkeypatch.setattr(silo.pipeline, "restore", flaky)
    args = dict(task="sr4", method="naive", simulate=True, prior=files / "prior", show_progress=False, batch_size=3)
    with pytest.raises(silo.SiloError, match="RuntimeError: boom"):
        silo.restore(x, output_dir=tmp_path, **args)
    assert len(list(tmp_path.glob("*.json"))) == 2  # the other two were retried one by one and written
    monkeypatch.setattr(silo.pipeline, "restore", real)
    results = silo.restore(x, output_dir=tmp_path, **args)  # two read back, one new
    assert [r.log["name"] for r in results] == ["image-000", "image-001", "image-002"]


def test_a_scheduler_or_step_count_the_prior_cannot_take_is_one_error_before_work(files, tmp_path, capsys):
    base = [
        "restore",
        str(files / "photo.png"),
        "--simulate",
        "--prior",
        str(files / "prior"),
        "--operator",
        str(files / "op"),
        "--output-dir",
        str(tmp_path),
        "--no-progress",
    ]
    for extra, words in (
        (["--scheduler", "nope"], "unknown scheduler"),
        (["--steps", "5000"], "steps must be in 1..1000"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*"))


def test_restore_param_draws_skip_degradations_without_random_parameters(files, tmp_path):
    args = [
        "restore",
        str(files / "photo.png"),
        "--simulate",
        "--prior",
        str(files / "prior"),
        "--method",
        "naive",
        "--param-draws",
        "3",
        "--no-progress",
        "--no-lpips",
    ]
    assert main([*args, "--task", "sr4", "--output-dir", str(tmp_path / "fixed")]) == 0
    assert len(list((tmp_path / "fixed").glob("*.json"))) == 1  # sr4 draws nothing at random: one result
    assert main([*args, "--task", "motion_blur", "--output-dir", str(tmp_path / "random")]) == 0
    assert len(list((tmp_path / "random").glob("*.json"))) == 3  # three kernels
