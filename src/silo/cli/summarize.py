"""``silo summarize FOLDER``: one table from any folder of per-image logs (restore's or evaluate's)."""

from __future__ import annotations

import argparse

COMMAND = "summarize"
HELP = "aggregate a folder of per-image JSON logs: mean and 95%% interval per metric, FID/KID when possible"
DESCRIPTION = """Read every per-image JSON log under FOLDER (recursively; written by `silo restore` or
`silo evaluate`), group them by task, method, prior, steps and scheduler, and write the table as
aggregate.{json,csv,md} (mean and 95% interval per metric, time per image and per step, peak memory) plus
plots. FID and KID over each group's saved output images against their references are computed with
torchmetrics when torch-fidelity and its Inception weights are available locally; otherwise they are
reported as unavailable (nothing is downloaded)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="folder holding per-image logs")
    p.add_argument("--output-dir", help="where the table and plots go [default: FOLDER]")
    p.add_argument("--no-fid", action="store_true", help="skip FID/KID")
    p.add_argument("--inception-weights", help="local torch-fidelity Inception weights (.pth) for FID/KID")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from silo.runs.evaluate import summarize_to

    table = summarize_to(
        Path(args.folder),
        Path(args.output_dir or args.folder),
        not args.no_fid,
        args.inception_weights,
        not args.no_plots,
    )
    return 1 if table.get("skipped") else 0  # a log left out of the table: said above, and the exit code says so
