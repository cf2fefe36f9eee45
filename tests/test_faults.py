"""Fault injection: each failure a careful user can cause, recreated in a temporary folder.

Every case checks the exit code, that the error is one line with no traceback, that the other inputs'
results exist, and that nothing outside the output folder changed. Runs use the shipped silo-tiny prior,
32 px images and 2 steps; the cases that need another process (concurrent runs, signals, a closed pipe, a
read-only or full file system) start ``python -m silo``. As root, permissions are enforced by running the
child without capabilities (``setpriv``) and a full disk is a tiny tmpfs in a private mount namespace
(``unshare``); as another user, modes and a user namespace do the same.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from silo.cli import main
from silo.testing import random_images

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
ROOT = os.geteuid() == 0
OPERATORS = Path(__file__).resolve().parents[1] / "src" / "silo" / "weights" / "silo-tiny" / "operators"


# ------------------------------------------------------------------------------------------------ helpers
def save_photo(path: Path, seed: int = 0, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    x = random_images(1, size, seed=seed)[0]
    Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        save_photo(folder / f"p{i}.png", seed=i)
    return folder


def snapshot(root: Path, out: Path) -> dict[str, tuple]:
    """Every path under ``root`` but the output folder ``out``, with its size, mode and modification time."""
    found = {}
    for p in sorted(root.rglob("*")):
        if p == out or out in p.parents:
            continue
        st = p.lstat()
        # the output folder's parents gain it (their times change); their entries are compared all the same
        when = None if p in out.parents else st.st_mtime_ns
        found[str(p.relative_to(root))] = (st.st_size, st.st_mode, when)
    return found


def results(folder: Path) -> dict[str, set[str]]:
    """Finished results in ``folder``: input name -> the kinds of file written (image, grid, log)."""
    out: dict[str, set[str]] = {}
    for p in folder.glob("*") if folder.is_dir() else []:
        m = re.match(r"(.+?)_[a-z0-9_]+?_s\d+_[0-9a-f]{8}(_grid)?\.(png|json)$", p.name)
        if m:
            out.setdefault(m.group(1).split("_")[0], set()).add("grid" if m.group(2) else m.group(3))
    return out


def hidden(folder: Path) -> list[str]:
    """Temporary files and claims left in ``folder`` (none once every run has ended)."""
    return sorted(p.name for p in folder.glob(".*") if p.name.endswith((".tmp", ".claim"))) if folder.is_dir() else []


def one_error(err: str, expect: str) -> str:
    """The single ``error:`` line of stderr, checked to contain ``expect``; no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert expect in lines[0], lines[0]
    return lines[0]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def restore_args(*args: str, steps: str = "2") -> list[str]:
    return ["restore", "--steps", steps, "--no-progress", "--no-lpips", *args]


def child_env() -> dict[str, str]:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTEST_ADDOPTS", None)
    return env


def silo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "silo", *args]


def without_privileges(cmd: list[str]) -> list[str]:
    """``cmd`` run so that file modes bind: as root, with no capabilities (``setpriv``); else as is."""
    return ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *cmd] if ROOT else cmd


def in_mount_namespace(script: str) -> list[str]:
    """A shell script run in a private mount namespace (as a non-root user, inside a user namespace)."""
    return ["unshare", "-m" if ROOT else "-rm", "--propagation", "private", "sh", "-c", script]


# ------------------------------------------------------------------------------- 1. one folder, two runs
def test_two_runs_on_one_folder_split_the_work_and_lose_nothing(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        save_photo(inputs / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)
    cmd = silo_cmd(*restore_args(str(inputs), "--simulate", "--output-dir", str(out)))
    runs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        for _ in range(2)
    ]
    done = []
    for p in runs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        assert "Traceback" not in stderr and "error:" not in stderr and "already exists" not in stderr, stderr
        restored = re.search(r"restored (\d+), skipped (\d+)", stderr)
        done.append(int(restored.group(1)))
    assert sum(done) == 4, done  # every result made exactly once between the two runs, none redone
    assert results(out) == {f"p{i}": {"png", "grid", "json"} for i in range(4)}
    assert hidden(out) == []  # claims released, no temporary files
    assert snapshot(tmp_path, out) == before


def test_a_live_runs_claim_is_left_alone_and_a_dead_runs_leftovers_are_cleared(photos, tmp_path, capsys):
    out = tmp_path / "out"
    args = restore_args(str(photos), "--simulate", "--output-dir", str(out))
    assert cli(capsys, *args)[0] == 0
    stems = sorted(p.name[: -len(".json")] for p in out.glob("p1_*.json"))
    assert len(stems) == 1
    stem = stems[0]
    for p in out.glob(f"{stem}*"):
        p.unlink()  # p1 not done yet: another run is writing it
    holder = subprocess.Popen(["sleep", "60"])
    try:
        claim = out / f".{stem}.claim"
        claim.write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "time": time.time()}))
        (out / f"{stem}.png").write_bytes(b"half-written")  # that run's image, not yet with its log
        (out / f".{stem}_grid.png.abcd1234.tmp").write_bytes(b"partial")
        rc, _, err = cli(capsys, *args)
        assert rc == 0 and "Traceback" not in err
        assert "another run (pid" in err
        assert (out / f"{stem}.png").read_bytes() == b"half-written"  # the live run's files untouched
        assert (out / f".{stem}_grid.png.abcd1234.tmp").exists() and claim.exists()
        assert not (out / f"{stem}.json").exists()
    finally:
        holder.kill()
        holder.wait()
    rc, _, err = cli(capsys, *args)  # the holder is gone: its claim is stale, its leftovers are cleared
    assert rc == 0 and "removed 2 incomplete leftover file(s)" in err
    assert results(out) == {f"p{i}": {"png", "grid", "json"} for i in range(3)}
    assert hidden(out) == []


# ------------------------------------------------------------------------------------- 2. write errors
def test_unwritable_output_and_unreadable_input_folders_are_one_line_before_work(photos, tmp_path):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    save_photo(unreadable / "x.png")
    before = snapshot(tmp_path, tmp_path / "none")
    readonly.chmod(0o555)
    unreadable.chmod(0o000)
    script = (
        "import contextlib, io, json, sys, traceback\n"
        "from silo.cli import main\n"
        "cases = json.loads(sys.argv[1]); report = []\n"
        "for argv in cases:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try: rc = main(argv)\n"
        "        except BaseException: rc = 'raised'; traceback.print_exc(file=err)\n"
        "    report.append([rc, err.getvalue()])\n"
        "print(json.dumps(report))\n"
    )
    cases = [
        restore_args(str(photos), "--simulate", "--output-dir", str(readonly / "out")),
        restore_args(str(photos), "--simulate", "--output-dir", str(readonly)),
        [
            "evaluate",
            str(photos),
            "--methods",
            "naive",
            "--no-progress",
            "--no-fid",
            "--output-dir",
            str(readonly / "ev"),
        ],
        restore_args(str(unreadable), "--simulate", "--output-dir", str(tmp_path / "o")),
    ]
    try:
        proc = subprocess.run(
            without_privileges([sys.executable, "-c", script, json.dumps(cases)]),
            text=True,
            capture_output=True,
            env=child_env(),
            timeout=600,
        )
    finally:
        unreadable.chmod(0o755)
        readonly.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for (rc, err), expect in zip(
        report, ["cannot write here (Permission denied)"] * 3 + ["cannot read this folder (Permission denied)"]
    ):
        assert rc == 2, err
        one_error(err, expect)
    assert snapshot(tmp_path, tmp_path / "none") == before  # nothing written anywhere, no folder made
    assert list(readonly.iterdir()) == []


def test_output_under_a_regular_file_is_one_line(photos, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    before = snapshot(tmp_path, tmp_path / "none")
    for command in (
        restore_args(str(photos), "--simulate", "--output-dir", str(blocker / "out")),
        ["evaluate", str(photos), "--methods", "naive", "--no-progress", "--output-dir", str(blocker / "ev")],
    ):
        rc, _, err = cli(capsys, *command)
        assert rc == 2
        one_error(err, f"{blocker} is a file, not a folder")
    assert snapshot(tmp_path, tmp_path / "none") == before


def test_a_full_disk_fails_each_result_in_one_line_and_keeps_the_others(photos, tmp_path, capsys):
    probe = tmp_path / "probe"  # one result's size, in pages: the tmpfs takes it and two pages more, not two
    assert cli(capsys, *restore_args(str(photos / "p0.png"), "--simulate", "--output-dir", str(probe)))[0] == 0
    pages = sum(-(-p.stat().st_size // 4096) for p in probe.iterdir())
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path, out)
    run = " ".join(silo_cmd(*restore_args(str(photos), "--simulate", "--output-dir", str(out))))
    script = f"mount -t tmpfs -o size={(pages + 2) * 4}k tmpfs {out} && {run}; rc=$?; echo FILES; ls -A {out}; exit $rc"
    proc = subprocess.run(in_mount_namespace(script), text=True, capture_output=True, env=child_env(), timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors and all("No space left on device" in line and str(out) in line for line in errors), proc.stderr
    files = proc.stdout.split("FILES", 1)[1].split()
    stems = {f[: -len(".json")] for f in files if f.endswith(".json")}
    assert stems, files  # the first result was written whole
    for stem in stems:
        assert {f"{stem}.png", f"{stem}_grid.png"} <= set(files)
    assert len(errors) + len(stems) == 3  # every input either finished or said why not
    assert not [f for f in files if f.endswith((".tmp", ".claim"))]  # no partial files
    assert not [f for f in files if f.endswith(".png") and f.replace("_grid", "").replace(".png", "") not in stems]
    assert snapshot(tmp_path, out) == before


def test_a_name_too_long_for_the_file_system_is_shortened_and_said(photos, tmp_path, capsys):
    long = photos / ("a" * 200 + "é" * 10 + ".png")  # 220 bytes of name: the result's names would pass 255
    save_photo(long, seed=5)
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)
    rc, _, err = cli(capsys, *restore_args(str(photos), "--simulate", "--output-dir", str(out)))
    assert rc == 0 and "Traceback" not in err
    assert "file names shortened to" in err
    names = [p.name for p in out.iterdir()]
    assert len(names) == 12 and max(len(n.encode()) for n in names) <= 255
    assert results(out)["p0"] == {"png", "grid", "json"}
    assert snapshot(tmp_path, out) == before


# -------------------------------------------------------------------------------------- 3. memory
def test_an_image_too_large_for_memory_is_refused_with_the_estimate_and_the_ways_out(photos, tmp_path, capsys):
    Image.new("RGB", (4000, 3008), (90, 120, 150)).save(photos / "big.png")
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)
    rc, _, err = cli(
        capsys,
        *restore_args(str(photos), "--simulate", "--memory-limit", "16", "--tile-size", "0", "--output-dir", str(out)),
    )  # in one piece, as before tiles
    assert rc == 1
    line = one_error(err, "big.png: restoring 4000x3008 with silo needs about")
    assert "16.0 GiB --memory-limit" in line and "--dtype bfloat16" in line and "a smaller image" in line
    assert "--tile-size" in line
    assert set(results(out)) == {"p0", "p1", "p2"}
    assert snapshot(tmp_path, out) == before


def test_the_memory_estimate_grows_with_the_image_and_halves_in_bfloat16():
    import torch

    from silo.runs.budget import available_bytes, estimate_bytes
    from silo.testing import tiny_prior

    prior = tiny_prior()
    small, big = estimate_bytes(prior, "silo", 512, 512), estimate_bytes(prior, "silo", 1024, 1024)
    assert big == 4 * small
    assert estimate_bytes(prior, "silo", 4096, 4096, tile=512) < estimate_bytes(prior, "silo", 4096, 4096) / 10
    assert estimate_bytes(prior, "silo", 512, 512, dtype="bfloat16") == small // 2
    assert estimate_bytes(prior, "ldps", 512, 512) > small > estimate_bytes(prior, "naive", 512, 512)
    assert available_bytes(torch.device("cpu")) > 0


# ------------------------------------------------------------------------------------ 4. names as paths
@pytest.mark.parametrize("name, written", [("../../../escaped", "______escaped"), ("jpeg / strong", "jpeg___strong")])
def test_task_names_never_become_paths(photos, tmp_path, capsys, name, written):
    task = tmp_path / "task.yaml"
    task.write_text(f"name: {json.dumps(name)}\ndegradation: {{type: super_resolution, scale: 4}}\nnoise_sigma: 0.01\n")
    out = tmp_path / "a" / "b" / "out"  # under the old naming, ../../../ landed in tmp_path / "a"
    out.parent.mkdir(parents=True)
    before = snapshot(tmp_path, out)
    rc, _, err = cli(
        capsys,
        *restore_args(
            str(photos),
            "--simulate",
            "--task",
            str(task),
            "--operator",
            str(OPERATORS / "sr4-cnn"),
            "--output-dir",
            str(out),
        ),
    )
    assert rc == 0 and "Traceback" not in err
    assert f"task name {name!r} is written as {written!r}" in err
    assert all(p.is_file() for p in out.iterdir())  # no sub-folder
    assert len(list(out.iterdir())) == 9 and all(f"_{written}_silo_" in p.name for p in out.iterdir())
    assert snapshot(tmp_path, out) == before


# ---------------------------------------------------------------------------------- 5. wrong pairings
def test_an_operator_for_another_task_is_refused_unless_allowed(photos, tmp_path, capsys):
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)
    for task in ("inpaint_random", "jpeg"):
        rc, _, err = cli(
            capsys,
            *restore_args(
                str(photos),
                "--simulate",
                "--task",
                task,
                "--operator",
                str(OPERATORS / "sr4-cnn"),
                "--output-dir",
                str(out),
            ),
        )
        assert rc == 2
        one_error(err, f"was trained for sr4 (super_resolution, scale 4), not {task}")
    assert snapshot(tmp_path, out) == before and not out.exists()
    rc, _, err = cli(
        capsys,
        *restore_args(
            str(photos),
            "--simulate",
            "--task",
            "jpeg",
            "--operator",
            str(OPERATORS / "sr4-cnn"),
            "--allow-operator-mismatch",
            "--output-dir",
            str(out),
        ),
    )
    assert rc == 0 and "--allow-operator-mismatch" in err
    assert set(results(out)) == {"p0", "p1", "p2"}


def test_a_kernel_the_operator_does_not_read_is_refused_unless_allowed(tmp_path, capsys):
    blurred = save_photo(tmp_path / "blurred.png", size=(64, 64))
    kernel = tmp_path / "k.npy"
    np.save(kernel, np.ones((5, 5)) / 25)
    out = tmp_path / "out"
    args = restore_args(str(blurred), "--task", "gaussian_blur", "--kernel", str(kernel), "--output-dir", str(out))
    rc, _, err = cli(capsys, *args)
    assert rc == 2
    one_error(err, "does not read a blur kernel, so the kernel would change nothing in the output")
    assert not out.exists()
    rc, _, err = cli(capsys, *args, "--allow-operator-mismatch")
    assert rc == 0 and "note: --allow-operator-mismatch" in err
    assert set(results(out)) == {"blurred"}


# ------------------------------------------------------------------------------------ 6. lazy decoding
def test_inputs_are_decoded_batch_by_batch(photos, tmp_path, capsys, monkeypatch):
    import silo.io.inputs as inputs
    import silo.io.outputs as outputs

    events: list[str] = []
    load, write = inputs.load_image, outputs.write_group
    monkeypatch.setattr(inputs, "load_image", lambda *a, **k: (events.append("decode"), load(*a, **k))[1])
    monkeypatch.setattr(outputs, "write_group", lambda files: (events.append("write"), write(files))[1])
    rc, _, _ = cli(
        capsys, *restore_args(str(photos), "--simulate", "--batch-size", "2", "--output-dir", str(tmp_path / "out"))
    )
    assert rc == 0
    assert events == ["decode", "decode", "write", "write", "decode", "write"]


# ------------------------------------------------------------------------------ 7. bad values, up front
BAD_TASKS = {
    "scale": ("degradation: {type: super_resolution, scale: four}\n", "degradation.scale must be an integer"),
    "quality": ("degradation: {type: jpeg, quality: high}\n", "degradation.quality must be an integer"),
    "eta": ("degradation: {type: jpeg}\nsampling: {eta: big}\n", "sampling.eta must be a number"),
    "start": (
        "degradation: {type: jpeg}\nsampling: {start_strength: half}\n",
        "sampling.start_strength must be a number",
    ),
    "noise": ("degradation: {type: jpeg}\nnoise_sigma: .nan\n", "noise_sigma must be a finite number"),
    "unicode": (b"degradation: {type: jpeg}\ndescription: \xff\xfe\n", "not a UTF-8 text file"),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_bad_task_files_are_one_line_before_work(photos, tmp_path, capsys, case):
    text, expect = BAD_TASKS[case]
    task = tmp_path / "task.yaml"
    task.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "out"
    rc, _, err = cli(capsys, *restore_args(str(photos), "--simulate", "--task", str(task), "--output-dir", str(out)))
    assert rc == 2
    one_error(err, expect)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, expect",
    [
        (["--eta", "nan"], "--eta must be a finite number"),
        (["--noise-sigma", "inf"], "--noise-sigma must be a finite number >= 0"),
        (["--grad-clamp", "nan"], "--grad-clamp must be a finite number"),
        (["--ddim-eta=-inf"], "--ddim-eta must be a finite number"),
        (["--seed", str(2**63)], "--seed must be an integer in 0..9223372036854775807"),
        (["--seed", str(2**64 + 5)], "--seed must be an integer in 0..9223372036854775807"),
        (["--memory-limit", "nan"], "--memory-limit must be a number of GiB >= 0"),
    ],
)
def test_bad_flags_are_one_line_before_any_model_loads(photos, tmp_path, capsys, monkeypatch, flags, expect):
    import silo.runs.models as models

    monkeypatch.setattr(models, "load_prior", lambda *a, **k: pytest.fail("a model was loaded"))
    rc, _, err = cli(capsys, *restore_args(str(photos), "--simulate", *flags, "--output-dir", str(tmp_path / "o")))
    assert rc == 2
    one_error(err, expect)
    assert not (tmp_path / "o").exists()


def test_errors_of_the_whole_run_come_first_with_exit_2(photos, tmp_path, capsys, monkeypatch):
    mask = save_photo(tmp_path / "mask.png")
    out = tmp_path / "out"
    rc, _, err = cli(capsys, *restore_args(str(photos), "--task", "sr4", "--mask", str(mask), "--output-dir", str(out)))
    assert rc == 2
    one_error(err, "--mask is for inpainting tasks, not sr4")
    rc, _, err = cli(capsys, *restore_args(str(photos), "--simulate", "--output-dir", str(out), steps="100000"))
    assert rc == 2
    one_error(err, "steps must be in 1..1000 for this prior, got 100000")
    assert not out.exists()


# -------------------------------------------------------------------------------------- 8. summarize
def test_summarize_counts_and_names_every_skipped_log(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, *restore_args(str(photos), "--simulate", "--output-dir", str(out)))[0] == 0
    logs = sorted(out.glob("*.json"))
    bad = json.loads(logs[0].read_text())
    bad["settings"], bad["seed"] = [1, 2], "one"
    (out / "wrong-types.json").write_text(json.dumps(bad))
    (out / "cut.json").write_text(logs[1].read_text()[:200])
    before = snapshot(tmp_path, out)
    rc, stdout, err = cli(capsys, "summarize", str(out), "--no-fid", "--no-plots")
    assert rc == 1 and "Traceback" not in err
    assert f"skipped {out / 'cut.json'}: not valid JSON" in err
    assert f"skipped {out / 'wrong-types.json'}: 'settings' is a list" in err
    assert "skipped 2 log(s)" in err and "grouped 3 results" in err
    table = json.loads((out / "aggregate.json").read_text())
    assert table["logs"] == 3 and [s["path"] for s in table["skipped"]] == ["cut.json", "wrong-types.json"]
    assert "| sr4 |" in stdout
    assert snapshot(tmp_path, out) == before


# ---------------------------------------------------------------------------------- 9. the smaller ones
def test_outputs_follow_the_umask(photos, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        rc, _, _ = cli(capsys, *restore_args(str(photos / "p0.png"), "--simulate", "--output-dir", str(tmp_path / "o")))
        assert rc == 0
    finally:
        os.umask(old)
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "o").iterdir()} == {0o644}


def test_a_closed_pipe_stops_the_printing_not_the_batch(photos, tmp_path):
    out = tmp_path / "out"
    cmd = silo_cmd(*restore_args(str(photos), "--simulate", "--method", "naive", "--output-dir", str(out)))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert set(results(out)) == {"p0", "p1", "p2"}


def test_exif_orientation_is_applied(tmp_path, capsys):
    photo = Image.new("RGB", (64, 32), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: shown rotated 90 degrees
    photo.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    out = tmp_path / "out"
    rc, _, _ = cli(
        capsys, *restore_args(str(tmp_path / "phone.jpg"), "--simulate", "--method", "naive", "--output-dir", str(out))
    )
    assert rc == 0
    (image,) = [p for p in out.glob("*.png") if not p.name.endswith("_grid.png")]
    assert Image.open(image).size == (32, 64)


def test_a_dark_16_bit_image_keeps_its_16_bit_scale(tmp_path, capsys):
    arr = np.full((SIZE, SIZE), 200, np.uint16)  # 200 / 65535: nearly black
    Image.fromarray(arr).save(tmp_path / "dark.png")
    assert Image.open(tmp_path / "dark.png").mode.startswith("I")
    out = tmp_path / "out"
    rc, _, _ = cli(
        capsys,
        *restore_args(
            str(tmp_path / "dark.png"), "--simulate", "--convert-rgb", "--method", "naive", "--output-dir", str(out)
        ),
    )
    assert rc == 0
    (image,) = [p for p in out.glob("*.png") if not p.name.endswith("_grid.png")]
    assert np.asarray(Image.open(image)).mean() < 8  # not 200 (read as 8-bit, 257x too bright)


@pytest.mark.parametrize(
    "level, expect", [(None, "of the mask is grey"), (128, "one grey level (128/255)"), (0, "the mask is all black")]
)
def test_doubtful_masks_are_said(tmp_path, capsys, level, expect):
    save_photo(tmp_path / "hole.png")
    if level is None:
        arr = np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8), (SIZE, 1))  # a gradient, not black and white
    else:
        arr = np.full((SIZE, SIZE), level, np.uint8)
    Image.fromarray(arr).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    rc, _, err = cli(
        capsys,
        *restore_args(
            str(tmp_path / "hole.png"),
            "--task",
            "inpaint_center",
            "--method",
            "naive",
            "--mask",
            str(tmp_path / "mask.png"),
            "--output-dir",
            str(out),
        ),
    )
    assert rc == 0 and "Traceback" not in err
    assert expect in err and "note:" in err
    assert set(results(out)) == {"hole"}


def test_sigterm_and_sigkill_leave_nothing_a_rerun_cannot_finish(tmp_path, capsys):
    import selectors

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        save_photo(inputs / f"p{i}.png", seed=i)
    outs = {sig: tmp_path / f"out-{sig.name}" for sig in (signal.SIGTERM, signal.SIGKILL)}
    before = snapshot(tmp_path, tmp_path / "none")
    procs = {
        sig: subprocess.Popen(
            silo_cmd(*restore_args(str(inputs), "--simulate", "--output-dir", str(out), steps="30")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for sig, out in outs.items()
    }
    with selectors.DefaultSelector() as sel:
        for sig, proc in procs.items():
            sel.register(proc.stdout, selectors.EVENT_READ, sig)
        waiting = set(procs)
        while waiting:  # each is signalled once its first result is written: the next is being restored
            for key, _ in sel.select(timeout=600):
                assert "->" in key.fileobj.readline()
                procs[key.data].send_signal(key.data)
                sel.unregister(key.fileobj)
                waiting.discard(key.data)
    stderr = {sig: proc.communicate(timeout=600)[1] for sig, proc in procs.items()}
    assert procs[signal.SIGTERM].returncode == 143
    assert "Traceback" not in stderr[signal.SIGTERM]
    last = stderr[signal.SIGTERM].strip().splitlines()[-1]
    assert last.endswith("terminated; finished results are kept, rerun to resume")
    assert hidden(outs[signal.SIGTERM]) == []  # its claim released, its temporary files removed
    assert procs[signal.SIGKILL].returncode == -signal.SIGKILL
    killed = outs[signal.SIGKILL]
    for claim in killed.glob(".*.claim"):  # the result it was on: as if killed in the middle of writing it
        (killed / f"{claim.name[: -len('.claim')]}.png.x1y2z3w4.tmp").write_bytes(b"partial")
    for out in outs.values():
        assert len(results(out)) < 3
        rc, _, err = cli(capsys, *restore_args(str(inputs), "--simulate", "--output-dir", str(out), steps="30"))
        assert rc == 0 and "Traceback" not in err
        assert results(out) == {f"p{i}": {"png", "grid", "json"} for i in range(3)}
        assert hidden(out) == []
    assert {k: v for k, v in snapshot(tmp_path, tmp_path / "none").items() if not k.startswith("out-")} == before


def test_misleading_library_messages_are_replaced(tmp_path, capsys):
    import torch

    noise = tmp_path / "kernel.npy"
    noise.write_bytes(os.urandom(256))
    save_photo(tmp_path / "blurred.png", size=(64, 64))
    rc, _, err = cli(
        capsys,
        *restore_args(
            str(tmp_path / "blurred.png"),
            "--task",
            "motion_blur",
            "--kernel",
            str(noise),
            "--output-dir",
            str(tmp_path / "o"),
        ),
    )
    assert rc == 2
    one_error(err, "not a NumPy .npy array file")
    assert "pickle" not in err
    torch.save({"weight": torch.zeros(1), "extra": shutil.Error("x")}, tmp_path / "op.pt")
    rc, _, err = cli(capsys, "convert-checkpoint", str(tmp_path / "op.pt"), str(tmp_path / "conv"))
    assert rc == 2
    one_error(err, "holds Python objects other than tensors (shutil.Error)")
    assert "weights_only=False" not in err and "trust" not in err


def test_a_run_killed_after_finishing_a_result_leaves_nothing_stale(tmp_path, capsys):
    """Killed between writing a result and giving its claim back: the rerun skips the finished result, and
    removes the dead run's claim and temporary files, keeping the result's own files."""
    photo = save_photo(tmp_path / "p0.png")
    out = tmp_path / "out"
    rc, _, err = cli(capsys, *restore_args(str(photo), "--simulate", "--output-dir", str(out)))
    assert rc == 0, err
    (log,) = out.glob("*.json")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    claim = out / f".{log.stem}.claim"
    claim.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "time": time.time()}))
    (out / f".{log.stem}.png.x1y2z3w4.tmp").write_bytes(b"partial")
    rc, _, err = cli(capsys, *restore_args(str(photo), "--simulate", "--output-dir", str(out)))
    assert rc == 0 and "Traceback" not in err and "exists" in err
    assert hidden(out) == []
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".silo-claims.lock"}  # the takeover's lock
    assert after == before
