#!/usr/bin/env python
"""Peak memory and time of `silo restore` against image side, tiled and in one piece; writes JSON.

Each run is its own `python -m silo restore --simulate` process on a centre square of a held-out photo
(resized to the side with Lanczos), so its peak resident set (``wait4``'s ``ru_maxrss``, models included) is
its own; its log gives PSNR, the tiling and the seconds. A benchmark, not a test:

    python scripts/measure_tiling.py --sides 256,512,1024,2048 --tile-size 256 --output runs/tiling/tiling.json

``--untiled-max`` skips one-piece runs above that side (their memory grows with the area).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", default="256,512,1024,2048")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--untiled-max", type=int, default=1024)
    parser.add_argument("--task", default="sr4")
    parser.add_argument("--photo", default="plasma-Path")
    parser.add_argument("--extra", default="", help="more `silo restore` options, space-separated")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.output.exists():
        print(f"{args.output} exists", file=sys.stderr)
        return 2
    import numpy as np
    from PIL import Image

    from silo.data import photos

    work = args.output.parent / args.output.stem
    work.mkdir(parents=True, exist_ok=True)
    photo = photos.heldout_photos()[args.photo]
    rows = []
    for side in [int(s) for s in args.sides.split(",")]:
        ref = work / f"{args.photo}-{side}.png"
        if not ref.exists():
            Image.fromarray(np.ascontiguousarray(photos.centre_square(photo, side))).save(ref)
        for tile in (args.tile_size, 0):
            if tile == 0 and side > args.untiled_max:
                rows.append({"side": side, "tile_size": 0, "skipped": f"one piece above {args.untiled_max} px"})
                continue
            out = work / f"{side}-tile{tile}"
            cmd = [
                sys.executable,
                "-m",
                "silo",
                "restore",
                str(ref),
                "--simulate",
                "--task",
                args.task,
                "--tile-size",
                str(tile),
                "--output-dir",
                str(out),
                "--no-lpips",
                "--no-progress",
                "--save",
                "image",
                *args.extra.split(),
            ]
            start = time.perf_counter()
            pid = os.spawnvpe(os.P_NOWAIT, cmd[0], cmd, {**os.environ, "OMP_NUM_THREADS": "1"})
            _, status, usage = os.wait4(pid, 0)
            wall = time.perf_counter() - start
            logs = sorted(out.glob("*.json"))
            log = json.loads(logs[-1].read_text()) if logs else {}
            m = log.get("metrics", {})
            rows.append(
                {
                    "side": side,
                    "tile_size": tile,
                    "exit": os.waitstatus_to_exitcode(status),
                    "peak_rss_bytes": usage.ru_maxrss * 1024,
                    "process_seconds": wall,
                    "sampling_seconds": log.get("sampling_seconds"),
                    "steps": log.get("settings", {}).get("steps"),
                    "psnr": m.get("psnr"),
                    "ssim": m.get("ssim"),
                    "tiling": log.get("tiling"),
                    "command": " ".join(cmd[1:]),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))
    tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
