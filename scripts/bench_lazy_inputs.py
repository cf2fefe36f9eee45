"""Peak memory of `silo restore` against the number of inputs: flat, because inputs are decoded batch by batch.

Writes N photos of SIZE px (smooth random content) into a temporary folder and restores them with the naive
method (no sampling: what is measured is the input layer and the runner, not a model), one process per N,
reporting the process's peak resident set (``ru_maxrss``) for each:

    python scripts/bench_lazy_inputs.py --counts 8 64 256 --size 512

Each row is a fresh ``python -m silo restore`` process; the output folders are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_photos(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    small = (rng.random((count, size // 16, size // 16, 3)) * 255).astype(np.uint8)
    for i in range(count):
        Image.fromarray(small[i]).resize((size, size), Image.BICUBIC).save(folder / f"photo{i:05d}.png")


def measure(folder: Path, out: Path) -> tuple[int, float]:
    """Peak resident set (bytes) and wall time of one `silo restore` over ``folder``."""
    code = (
        "import resource, sys\n"
        "from silo.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
        "sys.exit(rc)\n"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "restore",
            str(folder),
            "--simulate",
            "--method",
            "naive",
            "--task",
            "sr4",
            "--no-progress",
            "--no-lpips",
            "--save",
            "image",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    kib = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MAXRSS")))
    return kib * 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="silo-lazy-") as tmp:
        for n in args.counts:
            folder = Path(tmp) / f"in-{n}"
            folder.mkdir()
            make_photos(folder, n, args.size)
            peak, seconds = measure(folder, Path(tmp) / f"out-{n}")
            rows.append(
                {"inputs": n, "size": args.size, "peak_rss_mib": round(peak / 2**20, 1), "seconds": round(seconds, 1)}
            )
            print(json.dumps(rows[-1]), flush=True)
    print("| inputs | size | peak RSS (MiB) | seconds |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['inputs']} | {r['size']} px | {r['peak_rss_mib']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
