"""Every method's defaults follow the measurement on every shipped task with the shipped silo-tiny: the
consistency PSNR of its output (``A(output)`` against ``y``, the method's own output: known pixels not
pasted back) is well above that of an unguided sample of the prior. A step size that ignores the
measurement (Latent-DPS's old global zeta on inpainting) fails here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from silo.cli import main
from silo.degradations.tasks import list_tasks
from silo.samplers import SAMPLERS

pytestmark = pytest.mark.usefixtures("one_thread")

CROPS = sorted((Path(__file__).parent / "data" / "heldout-crops-64").glob("crop-00.png"))
#: dB above the unguided sample that counts as following the measurement
MARGIN = 3.0


def _rows(folder: Path) -> dict[tuple[str, str], float]:
    rows = json.loads((folder / "aggregate.json").read_text())["rows"]
    return {
        (r["task"], r["method"].split("[")[0].split("(")[0]): r["metrics"]["consistency_psnr"]["mean"] for r in rows
    }


def test_every_method_at_its_defaults_follows_the_measurement(tmp_path):
    tasks = ",".join(t for t in list_tasks() if t != "identity")
    common = [
        *map(str, CROPS),
        "--tasks",
        tasks,
        "--batch-size",
        str(len(CROPS)),
        "--no-keep-known",
        "--save",
        "none",
        "--no-progress",
        "--no-lpips",
        "--no-plots",
        "--no-fid",
    ]
    assert main(["evaluate", *common, "--methods", ",".join(SAMPLERS), "--output-dir", str(tmp_path / "guided")]) == 0
    # the unguided reference: a prior sample from noise, no step toward the measurement
    assert (
        main(
            [
                "evaluate",
                *common,
                "--methods",
                "silo_x0",
                "--method-option",
                "silo_x0.step=0",
                "--start-strength",
                "1",
                "--output-dir",
                str(tmp_path / "unguided"),
            ]
        )
        == 0
    )
    guided, unguided = _rows(tmp_path / "guided"), _rows(tmp_path / "unguided")
    missing = {(t, m) for t in tasks.split(",") for m in SAMPLERS if not (m == "psld" and t == "jpeg")} - set(guided)
    assert not missing, f"no result for {sorted(missing)}"
    behind = {
        f"{m} on {t}: {c:.1f} dB against unguided {unguided[(t, 'silo_x0')]:.1f}"
        for (t, m), c in guided.items()
        if c < unguided[(t, "silo_x0")] + MARGIN
    }
    assert not behind, "; ".join(sorted(behind))
