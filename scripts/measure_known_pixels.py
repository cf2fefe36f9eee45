#!/usr/bin/env python
"""Inpainting on silo-tiny's held-out photos: whole image, known region and hole, with and without keeping
the known pixels, against the masked and the mean-filled measurement; and the optional data-consistency
step on the other tasks.

    python scripts/measure_known_pixels.py --output runs/known/known.json
    python scripts/measure_known_pixels.py --consistency --output runs/known/consistency.json

Every restoration goes through ``silo.pipeline.restore`` with the settings ``silo restore`` resolves (the
shipped operator's card, 50 DDIM steps), so each row is what ``silo restore --photos heldout --photo-size S
--task T [--no-keep-known]`` gives; the table is printed as Markdown and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    if any(math.isinf(v) for v in values):
        return float("inf")
    return statistics.fmean(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64:16,256:4", help="SIDE:COUNT pairs of held-out crops")
    parser.add_argument("--consistency", action="store_true", help="measure the data-consistency step instead")
    parser.add_argument("--consistency-steps", default="0,1,3", help="steps compared with --consistency")
    parser.add_argument("--tasks", default=None)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.output.exists():
        print(f"{args.output} exists", file=sys.stderr)
        return 2
    import torch

    from silo.consistency import keep_known_pixels
    from silo.evaluation.metrics import region_metrics, restoration_metrics
    from silo.pipeline import restore
    from silo.runs.items import photo_items
    from silo.runs.models import Models
    from silo.runs.restore import build_setup, load_run_task

    torch.set_num_threads(1)
    models = Models.load(None, torch.device("cpu"), torch.float32, [], None, None, "trained_ckpt")
    sizes = [tuple(int(v) for v in pair.split(":")) for pair in args.sizes.split(",")]
    default_tasks = "sr4,gaussian_blur,jpeg" if args.consistency else "inpaint_center,inpaint_random"
    rows = []
    for side, count in sizes:
        items = photo_items("heldout", count, side)
        x = torch.cat([item.load() for item in items])
        for task_name in (args.tasks or default_tasks).split(","):
            task = load_run_task(task_name, None, None)
            setup = build_setup(models, task, "silo", {}, {})
            resolved = setup.resolved.at_size(side, side)
            seeds = [1000 + i for i in range(count)]
            params = task.degradation.sample_params(x.shape, [item.param_seed for item in items])
            if args.consistency:
                for steps in [int(s) for s in args.consistency_steps.split(",")]:
                    settings = replace(resolved.settings, consistency_steps=steps)
                    res = restore(
                        models.prior,
                        task,
                        settings,
                        seeds,
                        reference=x,
                        params=params,
                        method="silo",
                        operator=setup.operator,
                        show_progress=False,
                        method_options=resolved.method_options,
                    )
                    m = restoration_metrics(res.output, x, res.a_output, res.a_reference, with_lpips=False)
                    rows.append(
                        {
                            "size": side,
                            "n": count,
                            "task": task_name,
                            "consistency_steps": steps,
                            "psnr": _mean([r["psnr"] for r in m]),
                            "ssim": _mean([r["ssim"] for r in m]),
                            "consistency_psnr": _mean([r["consistency_psnr"] for r in m]),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
                continue
            settings = replace(resolved.settings, keep_known=False)
            res = restore(
                models.prior,
                task,
                settings,
                seeds,
                reference=x,
                params=params,
                method="silo",
                operator=setup.operator,
                show_progress=False,
                method_options=resolved.method_options,
            )
            mask = res.params["mask"].cpu()
            y = res.measurement.cpu()
            raw = res.output.cpu()
            kept = keep_known_pixels(raw, y, mask, resolved.settings.seam_feather)
            masked = y * mask
            fill = masked.sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True)
            mean_filled = masked + (1 - mask) * fill
            for name, out in (
                ("masked measurement", masked),
                ("mean-filled measurement", mean_filled),
                ("SILO, known pixels not kept", raw),
                (f"SILO, known pixels kept (feather {resolved.settings.seam_feather} px)", kept),
            ):
                whole = restoration_metrics(out, x, with_lpips=False)
                regions = region_metrics(out, x, mask, y)
                row = {
                    "size": side,
                    "n": count,
                    "task": task_name,
                    "estimate": name,
                    "psnr": _mean([r["psnr"] for r in whole]),
                    "ssim": _mean([r["ssim"] for r in whole]),
                }
                for key in ("psnr_known", "ssim_known", "psnr_hole", "ssim_hole", "psnr_known_vs_measurement"):
                    row[key] = _mean([r[key] for r in regions])
                rows.append(row)
                print(json.dumps(rows[-1]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2, default=str))
    tmp.replace(args.output)
    keys = [k for k in rows[0] if k not in ("n",)]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
