#!/usr/bin/env python
"""Reproduce the rows of `scripts/compare_silo_tiny.sh compare` one image at a time with `silo restore`.

Writes the held-out crops as PNG files (named like the crops, so each gets the same random degradation
parameters), restores them with `silo restore` for every task and method of the comparison, and checks each
result against the `silo evaluate` log with the same result key (same input, settings, models and seed):

    python scripts/compare_with_restore.py --compare runs/compare/heldout --output-dir runs/repro
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

TASKS = ["sr4", "sr8", "gaussian_blur", "motion_blur", "inpaint_center", "inpaint_random", "jpeg"]
#: (method, operator kind): the comparison's rows; kind None = the task's default operator
ROWS = [("naive", None), ("silo", None), ("ldps", None), ("psld", None), ("silo", "cnn"), ("silo_x0", "cnn")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, default=Path("runs/compare/heldout"), help="the evaluate output folder")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/repro"))
    parser.add_argument("--crops", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    from PIL import Image

    from silo.runs.items import photo_items

    crops = args.output_dir / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    for item in photo_items("heldout", args.crops, 64):
        path = crops / f"{item.name}.png"
        if not path.exists():
            x = item.load()[0]
            Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()).save(path)
    evaluated = {}
    for path in (args.compare / "runs").glob("*.json"):
        log = json.loads(path.read_text())
        evaluated[log["identity"]["key"]] = log
    worst = 0.0
    for task in TASKS:
        for method, kind in ROWS:
            if method == "psld" and task == "jpeg":
                continue  # PSLD needs a linear degradation
            out = args.output_dir / f"{task}-{method}-{kind or 'default'}"
            cmd = [
                "silo",
                "restore",
                *sorted(str(p) for p in crops.glob("*.png")),
                "--simulate",
                "--task",
                task,
                "--method",
                method,
                "--steps",
                str(args.steps),
                "--no-progress",
                "--output-dir",
                str(out),
            ]
            subprocess.run(cmd + (["--operator-kind", kind] if kind else []), check=True, capture_output=True)
            logs = [json.loads(p.read_text()) for p in out.glob("*.json")]
            same = [log for log in logs if log["identity"]["key"] in evaluated]
            diff = max(
                (abs(log["metrics"]["psnr"] - evaluated[log["identity"]["key"]]["metrics"]["psnr"]) for log in same),
                default=float("nan"),
            )
            worst = max(worst, diff) if same else worst
            restored = statistics.fmean(log["metrics"]["psnr"] for log in logs)
            both = (
                statistics.fmean(evaluated[log["identity"]["key"]]["metrics"]["psnr"] for log in same)
                if same
                else float("nan")
            )
            print(
                f"{task:15s} {logs[0]['method_label']:14s} n={len(logs)} same keys={len(same)} "
                f"restore PSNR {restored:.3f} evaluate {both:.3f} max |dPSNR| per image {diff:.2e}",
                flush=True,
            )
    print(f"largest per-image PSNR difference: {worst:.2e} dB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
