"""Training your own operator, as a careful user does it, for two degradations no task ships (pixelation and
colourisation in one .py file): each fault is recreated in a temporary folder and checked for its exit code,
a one-line message without a traceback, and the files it leaves.

Trainings use the small random prior of ``silo.testing`` (seconds each); the silo-tiny recipe is checked
with the shipped prior itself, for one step."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from silo.cli import main
from silo.testing import tiny_prior

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).resolve().parent / "data" / "heldout-crops-64"
DEG = """import torch.nn.functional as F


def pixelate(x):
    return F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode="nearest")


def colourise(x):
    return x.mean(1, keepdim=True).expand_as(x).contiguous()
"""
SMALL = json.dumps({"channels": [8, 8, 8, 8]})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    tiny_prior().save_pretrained(root / "prior")
    (root / "deg.py").write_text(DEG)
    return root


def train_args(world: Path, out: Path, *extra: str, spec: str | None = None) -> list[str]:
    return [
        "train-operator",
        "--prior",
        str(world / "prior"),
        "--degradation",
        spec or f"{world / 'deg.py'}:pixelate",
        "--data",
        str(DATA),
        "--output-dir",
        str(out),
        "--crop-size",
        "32",
        "--batch-size",
        "2",
        "--validation-images",
        "2",
        "--validation-every",
        "2",
        "--checkpoint-every",
        "2",
        "--num-workers",
        "0",
        "--report-to",
        "none",
        "--no-progress",
        "--operator-config",
        SMALL,
        "--lr",
        "2e-3",
        *extra,
    ]


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def refused(rc: int, err: str, *words: str) -> str:
    """Exit 2, no traceback, and the error is one line (the last) holding ``words``."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


@pytest.fixture(scope="module")
def pixelate_op(world):
    """A pixelation operator trained through the command line, and what the command printed."""
    out = world / "ops" / "pixelate"
    rc = main(train_args(world, out, "--max-steps", "4"))
    assert rc == 0
    return out


def test_printed_restore_command_carries_the_degradation_and_restore_checks_the_card(world, capsys, tmp_path):
    spec = f"{world / 'deg.py'}:pixelate"
    rc, out, err = run_cli(capsys, train_args(world, tmp_path / "op", "--max-steps", "2"))
    assert rc == 0, err
    printed = out.strip().splitlines()[-1].partition("restore with: ")[2]
    words = shlex.split(printed)
    assert words[:2] == ["silo", "restore"] and words[-1] == "IMAGE..."
    assert words[words.index("--degradation") + 1] == spec
    assert words[words.index("--operator") + 1] == str(tmp_path / "op")
    image = str(DATA / "crop-00.png")
    common = ["--simulate", image, "--steps", "2", "--no-progress", "--output-dir", str(tmp_path / "res")]
    rc, _, err = run_cli(capsys, [*words[1:-1], *common])  # the command as printed, with an image
    assert rc == 0, err
    assert [p.name.split("_")[1] for p in (tmp_path / "res").glob("*_grid.png")] == ["user-deg-pixelate"]

    before = snapshot(tmp_path / "res")
    without = [w for w in words[1:-1] if w not in ("--degradation", spec)]  # the command the old output gave
    refused(
        *run_cli(capsys, [*without, *common])[::2], "trained for user-deg-pixelate, not sr4", f"--degradation {spec}"
    )
    other = [*without, "--degradation", f"{world / 'deg.py'}:colourise", *common]
    refused(*run_cli(capsys, other)[::2], "trained for user-deg-pixelate, not user-deg-colourise")
    assert snapshot(tmp_path / "res") == before  # refused before any work

    rc, _, err = run_cli(capsys, [*other, "--allow-operator-mismatch"])
    assert rc == 0 and "--allow-operator-mismatch: operator" in err and "using it anyway" in err, err
    (log,) = [json.loads(p.read_text()) for p in (tmp_path / "res").glob("*colourise*.json")]
    assert "trained for user-deg-pixelate, not user-deg-colourise" in log["operator"]["mismatch_allowed"]

    edited = tmp_path / "edited" / "deg.py"  # the same file name and function, another body
    edited.parent.mkdir()
    edited.write_text(DEG.replace("avg_pool2d(x, 4), scale_factor=4", "avg_pool2d(x, 2), scale_factor=2"))
    refused(
        *run_cli(capsys, [*without, "--degradation", f"{edited}:pixelate", *common])[::2],
        "another version of its function",
    )


def test_two_functions_of_one_file_are_two_tasks_and_stay_apart(world, capsys, tmp_path):
    from silo.degradations.user import task_name

    assert task_name(f"{world / 'deg.py'}:pixelate") == task_name("deg.py:pixelate") == "user-deg-pixelate"
    assert task_name("pkg.sub.degs:Blur.apply") == "user-degs-Blur-apply"
    base = [
        "restore",
        "--prior",
        str(world / "prior"),
        "--simulate",
        str(DATA / "crop-00.png"),
        "--method",
        "naive",
        "--no-progress",
        "--output-dir",
        str(tmp_path / "res"),
    ]
    for fn in ("pixelate", "colourise"):
        rc, _, err = run_cli(capsys, [*base, "--degradation", f"{world / 'deg.py'}:{fn}"])
        assert rc == 0 and "restored 1, skipped 0" in err, err  # the second is new work, not "already done"
    names = sorted(p.name.split("_")[1] for p in (tmp_path / "res").glob("*_grid.png"))
    assert names == ["user-deg-colourise", "user-deg-pixelate"]
    rc, out, err = run_cli(capsys, ["summarize", str(tmp_path / "res"), "--no-plots"])
    assert rc == 0, err
    rows = json.loads((tmp_path / "res" / "aggregate.json").read_text())["rows"]
    assert sorted(r["task"] for r in rows) == ["user-deg-colourise", "user-deg-pixelate"]


def test_evaluate_takes_a_user_degradation(world, capsys, tmp_path):
    base = [
        "evaluate",
        str(DATA / "crop-00.png"),
        "--prior",
        str(world / "prior"),
        "--methods",
        "naive",
        "--no-fid",
        "--no-plots",
        "--no-progress",
    ]
    rc, _, err = run_cli(
        capsys, [*base, "--degradation", f"{world / 'deg.py'}:colourise", "--output-dir", str(tmp_path / "ev")]
    )
    assert rc == 0, err
    (log,) = [json.loads(p.read_text()) for p in (tmp_path / "ev" / "runs").glob("*.json")]
    assert "user-deg-colourise" in json.dumps(log)  # the task is the degradation, not the default sr4
    refused(
        *run_cli(
            capsys, [*base, "--degradation", f"{world / 'deg.py'}:nothing", "--output-dir", str(tmp_path / "ev2")]
        )[::2],
        "has no attribute 'nothing'",
    )
    assert not (tmp_path / "ev2").exists()


@pytest.mark.parametrize("damage", ["model.safetensors", "optimizer.bin", "silo_train_state.json"])
def test_a_truncated_checkpoint_is_one_line_naming_the_file(world, pixelate_op, capsys, tmp_path, damage):
    import shutil

    out = tmp_path / "op"
    shutil.copytree(pixelate_op, out)
    target = out / "checkpoints" / "step-4" / damage
    with open(target, "r+b") as f:
        f.truncate(target.stat().st_size // 2)
    before = snapshot(out)
    rc, _, err = run_cli(capsys, train_args(world, out, "--max-steps", "6", "--resume-from-checkpoint", "latest"))
    refused(
        rc,
        err,
        f"checkpoint file {target} is damaged or truncated",
        f"--resume-from-checkpoint {out / 'checkpoints' / 'step-2'}",
    )
    assert snapshot(out) == before  # nothing written, no lock left


def test_resuming_on_another_process_count_is_refused(world, pixelate_op, capsys, tmp_path):
    import shutil

    out = tmp_path / "op"
    shutil.copytree(pixelate_op, out)
    ckpt = out / "checkpoints" / "step-4"  # as a 2-process run leaves it: its state and a second RNG state
    state = json.loads((ckpt / "silo_train_state.json").read_text())
    assert state["processes"] == 1
    (ckpt / "silo_train_state.json").write_text(json.dumps({**state, "processes": 2}))
    shutil.copy(ckpt / "random_states_0.pkl", ckpt / "random_states_1.pkl")
    before = snapshot(out)
    rc, _, err = run_cli(capsys, train_args(world, out, "--max-steps", "6", "--resume-from-checkpoint", "latest"))
    refused(rc, err, "was trained on 2 processes (effective batch 4), this run has 1", "resume on 2 processes")
    assert snapshot(out) == before


def test_the_degradation_is_its_source_not_its_path(world, capsys, tmp_path):
    out = tmp_path / "op"
    assert main(train_args(world, out, "--max-steps", "2")) == 0
    moved = tmp_path / "elsewhere" / "deg.py"  # the same file, reached by another path
    moved.parent.mkdir()
    moved.write_text(DEG)
    rc, _, err = run_cli(
        capsys,
        train_args(world, out, "--max-steps", "4", "--resume-from-checkpoint", "latest", spec=f"{moved}:pixelate"),
    )
    assert rc == 0, err
    assert json.loads((out / "model_card.json").read_text())["steps"] == 4
    moved.write_text(DEG.replace("avg_pool2d(x, 4), scale_factor=4", "avg_pool2d(x, 2), scale_factor=2"))
    before = snapshot(out)
    rc, _, err = run_cli(
        capsys,
        train_args(world, out, "--max-steps", "6", "--resume-from-checkpoint", "latest", spec=f"{moved}:pixelate"),
    )
    refused(rc, err, "was trained on another version of", "undo the edit")
    assert snapshot(out) == before


def test_a_checkpoint_naming_its_degradation_by_path_still_resumes(world, capsys, tmp_path):
    """Checkpoints written before source hashes name the degradation by its path: the same function resumes."""
    out, spec = tmp_path / "op", f"{world / 'deg.py'}:pixelate"
    assert main(train_args(world, out, "--max-steps", "2")) == 0
    path = out / "checkpoints" / "step-2" / "silo_train_state.json"
    state = json.loads(path.read_text())
    state["config"]["degradation"] = spec
    state["config"]["degradation_settings"] = {"name": f"user:{spec}", "noise_sigma": 0.0, "callable": spec, "scale": 1}
    path.write_text(json.dumps(state))
    rc, _, err = run_cli(capsys, train_args(world, out, "--max-steps", "4", "--resume-from-checkpoint", "latest"))
    assert rc == 0 and "names its degradation by path only" in err, err
    other = train_args(
        world,
        out,
        "--max-steps",
        "4",
        "--resume-from-checkpoint",
        str(path.parent),
        spec=f"{world / 'deg.py'}:colourise",
    )
    refused(*run_cli(capsys, other)[::2], "another configuration: degradation was")


def test_metrics_do_not_repeat_replayed_steps(world, capsys, tmp_path):
    import shutil

    out = tmp_path / "op"
    assert main(train_args(world, out, "--max-steps", "4")) == 0
    shutil.rmtree(out / "checkpoints" / "step-4")  # killed after step 4 was logged, before its checkpoint
    rc, _, err = run_cli(capsys, train_args(world, out, "--max-steps", "4", "--resume-from-checkpoint", "latest"))
    assert rc == 0 and "dropped 3 lines of steps after 2" in err, err
    lines = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "train/loss" in m] == [1, 2, 3, 4]
    assert [m["step"] for m in lines if "val/loss" in m] == [0, 2, 4]


def test_two_trainings_into_one_folder_are_prevented_and_a_stale_lock_is_taken_over(world, capsys, tmp_path):
    from silo.training.lock import LOCK_FILE

    out = tmp_path / "op"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
    }
    first = subprocess.Popen(
        [sys.executable, "-m", "silo", *train_args(world, out, "--max-steps", "100000", "--checkpoint-every", "1")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not list((out / "checkpoints").glob("step-*/silo_train_state.json")):
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline
            time.sleep(0.2)
        lock = json.loads((out / LOCK_FILE).read_text())
        assert lock["pid"] == first.pid
        rc, _, err = run_cli(
            capsys, train_args(world, out, "--max-steps", "100000", "--resume-from-checkpoint", "latest")
        )
        refused(rc, err, f"another training (process {first.pid}", str(out))
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert (out / LOCK_FILE).is_file()  # a killed run leaves its lock: stale now
    from silo.training.operator import list_checkpoints

    last = int(list_checkpoints(out / "checkpoints")[-1].name[5:])
    rc, _, err = run_cli(
        capsys, train_args(world, out, "--max-steps", str(last + 1), "--resume-from-checkpoint", "latest")
    )
    assert rc == 0 and f"took over a stale lock {out / LOCK_FILE} (process {first.pid} no longer runs)" in err, err
    assert not (out / LOCK_FILE).exists()
    assert json.loads((out / "model_card.json").read_text())["steps"] == last + 1


def test_prior_silo_tiny_by_name_trains_with_its_recipe_and_prints_the_validation_loss(capsys, tmp_path):
    from silo.models import shipped_root

    if not (shipped_root() / "prior" / "unet").is_dir():
        pytest.fail("this build ships no silo-tiny prior")
    out = tmp_path / "op"
    argv = [
        "train-operator",
        "--prior",
        "silo-tiny",
        "--task",
        "sr4",
        "--data",
        str(DATA),
        "--output-dir",
        str(out),
        "--max-steps",
        "1",
        "--validation-images",
        "2",
        "--report-to",
        "none",
        "--no-progress",
    ]
    rc, stdout, err = run_cli(capsys, argv)
    assert rc == 0, err
    for words in (
        "max_steps 1 (given)",
        "batch_size 8 (silo-tiny recipe)",
        "crop_size 64 (silo-tiny recipe)",
        "lr 0.001 (silo-tiny recipe)",
        'operator_config {"residual": true} (silo-tiny recipe)',
        "checkpoint_every 100 (silo-tiny recipe)",
        "num_workers 0 (silo-tiny recipe)",
        "noise_sigma_max 0.02 (cnn default)",
    ):
        assert words in err, (words, err)
    assert "step 0/1: validation loss" in err and "step 1/1: validation loss" in err
    printed = shlex.split(stdout.strip().splitlines()[-1].partition("restore with: ")[2])
    assert printed[:4] == ["silo", "restore", "--prior", "silo-tiny"] and printed[-3:-1] == ["--task", "sr4"]
    rc, _, err = run_cli(
        capsys,
        [
            *printed[1:-1],
            "--simulate",
            str(DATA / "crop-00.png"),
            "--steps",
            "2",
            "--no-progress",
            "--output-dir",
            str(tmp_path / "res"),
        ],
    )
    assert rc == 0 and len(list((tmp_path / "res").glob("crop-00_sr4_silo_*_grid.png"))) == 1, err
    card = json.loads((out / "model_card.json").read_text())
    assert (card["lr"], card["crop_size"], card["batch_size"], card["operator"]["residual"]) == (1e-3, 64, 8, True)
    assert card["setting_sources"]["lr"] == "silo-tiny recipe" and card["task"] == "sr4"

    from silo.training.operator import TrainOperatorConfig

    readout = TrainOperatorConfig(prior="silo-tiny", output="o", kind="readout", task="sr4").resolve_defaults()
    assert (readout.max_steps, readout.lr, readout.operator_config) == (200, 5e-4, {})
    aware = TrainOperatorConfig(
        prior=str(shipped_root() / "prior"), output="o", task="motion_blur", kernel_aware=True
    ).resolve_defaults()
    assert aware.max_steps == 1200 and aware.setting_sources["max_steps"] == "silo-tiny recipe"
    other = TrainOperatorConfig(prior="some/hub-prior", output="o", task="sr4").resolve_defaults()
    assert (other.max_steps, other.crop_size, other.batch_size, other.lr) == (20000, 512, 16, 1e-4)
    assert other.setting_sources["max_steps"] == "default" and other.setting_sources["lr"] == "cnn default"
    with pytest.raises(SystemExit):
        main(["train-operator", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "With --prior silo-tiny" in shown and "[default: with --prior silo-tiny, its recipe: 64; else 512]" in shown
