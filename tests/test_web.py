"""`silo serve`'s page without a browser: the app builds with one sampling job at a time, and its handlers
restore through the same runner, settings and logs as `silo restore`, with the CLI's one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from silo.cli import main
from silo.testing import random_images, save_carded_models
from silo.web.app import build_app, handle_compare, handle_restore, painted_mask
from silo.web.service import PageRequest, Service

pytestmark = pytest.mark.usefixtures("one_thread")


def _save(x, path: Path) -> Path:
    Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_prior):
    """A tiny prior with a card (3 DDIM steps), an operator with a card, a photo and bad inputs."""
    root = tmp_path_factory.mktemp("web")
    save_carded_models(tiny_prior, root)
    _save(random_images(1, (32, 32), seed=5)[0], root / "photo.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 20)
    Image.new("L", (32, 32), 128).save(root / "grey.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture()
def service(files, tmp_path):
    return Service.start(
        str(files / "prior"), [str(files / "op")], device="cpu", output_dir=tmp_path / "web", lpips=False
    )


def _cli(files, out: Path, *args: str) -> int:
    return main(
        [
            "restore",
            *args,
            "--prior",
            str(files / "prior"),
            "--operator",
            str(files / "op"),
            "--no-progress",
            "--no-lpips",
            "--output-dir",
            str(out),
        ]
    )


def test_the_app_builds_with_one_sampling_job_at_a_time(service):
    demo = build_app(service)
    fns = {fn.name: fn for fn in demo.fns.values()}
    assert demo.analytics_enabled is False
    for name in ("on_restore", "on_compare"):  # both sample: one queue slot, shared
        assert fns[name].queue and fns[name].concurrency_limit == 1 and fns[name].concurrency_id == "device", name
    assert not fns["on_task"].queue  # listing methods never waits behind a sampling job
    config = json.dumps(demo.get_config_file())
    assert '"silo-run"' in config and '"silo-compare-run"' in config
    # with an operator for every task, every registered method that applies to sr4 is offered; PSLD refuses JPEG
    assert service.methods("sr4")[0] == "silo" and "naive" in service.methods("sr4")
    assert "psld" in service.methods("sr4") and "psld" not in service.methods("jpeg")


def test_the_handler_restores_through_the_runner_like_silo_restore(files, service, tmp_path):
    steps = []
    status, image, grid, _, metrics, downloads, settings = handle_restore(
        service,
        PageRequest(upload=str(files / "photo.png"), mode="simulate", task="sr4", method="silo"),
        lambda done_total, **_: steps.append(done_total),
    )
    assert status.startswith("done: 1 result"), status
    assert (
        _cli(files, tmp_path / "cli", str(files / "photo.png"), "--simulate", "--task", "sr4", "--pad") == 0
    )  # the page pads
    (cli_log,) = (tmp_path / "cli").glob("*.json")
    (page_log,) = (tmp_path / "web").glob("*.json")
    assert page_log.name == cli_log.name  # the same key: everything that changes the pixels agrees
    page, cli = json.loads(page_log.read_text()), json.loads(cli_log.read_text())
    assert page["settings"] == cli["settings"] and page["setting_sources"] == cli["setting_sources"]
    assert page["input"] == "photo.png" and page["mode"] == "simulate"
    assert np.array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(cli_log.with_suffix(".png"))))
    assert Path(grid).is_file() and sorted(Path(d).suffix for d in downloads) == [".json", ".png"]
    assert ["steps", "3", cli["setting_sources"]["steps"]] in settings and "prior card" in cli["setting_sources"][
        "steps"
    ]
    assert f"{page['metrics']['psnr']:.4g}" in metrics
    assert steps and steps[-1][0] == steps[-1][1] == len(steps)  # one progress tick per sampling step

    # a batch of seeds: one result per seed, each logged
    status, *_ = handle_restore(service, PageRequest(upload=str(files / "photo.png"), mode="simulate", seed=7, seeds=2))
    assert status.startswith("done: 2 result"), status
    assert {json.loads(p.read_text())["seed"] for p in (tmp_path / "web").glob("*_s7_*.json")} == {7}
    assert {json.loads(p.read_text())["seed"] for p in (tmp_path / "web").glob("*_s8_*.json")} == {8}


@pytest.mark.parametrize("name", ["corrupt.png", "grey.png", "notes.txt", "photo.png"])
def test_bad_uploads_give_the_clis_one_line(files, service, tmp_path, capsys, name):
    """The page's line is the CLI's, naming the file; a failed job writes nothing."""
    limited = Service(service.models, tmp_path / "web", max_pixels=32 * 32 - 1, lpips=False)  # photo.png is 32x32
    status, image, *_ = handle_restore(limited, PageRequest(upload=str(files / name), task="sr4"))
    capsys.readouterr()
    assert _cli(files, tmp_path / "cli", str(files / name), "--task", "sr4", "--max-pixels", str(32 * 32 - 1)) != 0
    cli_line = [line for line in capsys.readouterr().err.splitlines() if "error:" in line][-1]
    expected = cli_line.split("error: ", 1)[1].replace(f"{files / name}: {files / name}: ", f"{name}: ")
    assert status == "error: " + expected.replace(str(files / name), name), (status, cli_line)
    assert "\n" not in status and image is None
    assert not (tmp_path / "web").exists() or not any((tmp_path / "web").iterdir())


def test_a_painted_mask_marks_the_hole_and_a_drawn_kernel_blurs(files, service, tmp_path):
    editor = {
        "background": np.zeros((32, 32, 4), np.uint8),
        "layers": [np.zeros((32, 32, 4), np.uint8)],
        "composite": None,
    }
    editor["layers"][0][:8, :8, 3] = 255  # the brush painted the top-left corner
    mask = painted_mask(editor)
    assert mask.shape == (32, 32) and not mask[:8, :8].any() and mask[8:].all()
    assert painted_mask({"background": None, "layers": [np.zeros((32, 32, 4), np.uint8)], "composite": None}) is None

    photo = str(files / "photo.png")
    status, image, *_ = handle_restore(service, PageRequest(upload=photo, task="inpaint_center", method="naive"))
    assert status == "error: inpainting a measurement needs --mask (white = known pixels)", status
    status, image, *_ = handle_restore(
        service, PageRequest(upload=photo, task="inpaint_center", method="naive", mask=mask)
    )
    assert status.startswith("done"), status
    out, src = np.asarray(Image.open(image)).astype(int), np.asarray(Image.open(photo)).astype(int)
    assert np.abs(out[:8, :8] - 128).max() <= 1  # the hole holds the masked value (0 in [-1, 1])
    assert np.array_equal(out[8:], src[8:])  # the known pixels are the measurement's
    status, *_ = handle_restore(service, PageRequest(upload=photo, task="sr4", mode="simulate", mask=mask))
    assert status.startswith("error: a mask or kernel describes a real measurement"), status

    k3, k3b, k4 = (service.draw_kernel("motion_blur", s) for s in (3, 3, 4))
    assert np.array_equal(k3, k3b) and not np.array_equal(k3, k4) and abs(k3.sum() - 1) < 1e-5
    status, *_ = handle_restore(service, PageRequest(upload=photo, task="motion_blur", method="naive"))
    assert status == "error: deblurring this measurement needs its --kernel", status
    status, *_ = handle_restore(service, PageRequest(upload=photo, task="motion_blur", method="naive", kernel_seed=3))
    assert status.startswith("done"), status
    logs = [json.loads(p.read_text()) for p in (tmp_path / "web").glob("*motion_blur*.json")]
    assert len(logs) == 1 and logs[0]["mode"] == "measurement"


def test_compare_runs_two_to_four_methods_on_one_input(files, service):
    request = PageRequest(upload=str(files / "photo.png"), mode="simulate", task="sr4")
    status, gallery, table = handle_compare(service, request, ["silo", "naive"])
    assert status.startswith("done: 2 methods"), status
    assert [row[0] for row in table] == ["silo[cnn]", "naive"] and len(gallery) == 2
    assert all(float(row[1]) >= 0 and row[2] for row in table)  # seconds and PSNR for each
    assert handle_compare(service, request, ["silo"])[0] == "error: choose two to four methods to compare, got 1"


def test_serve_without_gradio_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["serve"]) == 2
    assert "pip install 'silo-restore[web]'" in capsys.readouterr().err


def test_a_bundled_example_is_simulated_and_named_as_in_the_cli(service, tmp_path):
    status, image, *_ = handle_restore(service, PageRequest(example="astronaut", task="sr4", method="naive"))
    assert status.startswith("done: 1 result"), status
    (log_path,) = (tmp_path / "web").glob("example-astronaut_sr4_naive_*.json")
    log = json.loads(log_path.read_text())
    assert log["mode"] == "simulate" and log["input"] == "example astronaut" and Image.open(image).size == (256, 256)
    both = PageRequest(example="astronaut", upload=str(tmp_path / "x.png"))
    assert handle_restore(service, both)[0] == "error: give a photo or an example, not both"


def test_serve_refuses_a_taken_port_in_one_line_before_loading_models(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--prior", "no/such-prior"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"silo serve: error: cannot listen on 127.0.0.1:{port} (Address already in use); pass another --port"
