"""``silo tasks``: list the shipped degradation tasks and their settings."""

from __future__ import annotations

import argparse
import json

COMMAND = "tasks"
HELP = "list the shipped degradation tasks (name, degradation, noise level, sampler defaults)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the full task definitions as JSON")


def run(args: argparse.Namespace) -> int:
    from silo.degradations.tasks import list_tasks, load_task

    tasks = [load_task(name) for name in list_tasks()]
    if args.json:
        print(json.dumps([t.to_dict() for t in tasks], indent=2))
        return 0
    print(f"{'task':<16} {'noise':>6}  {'eta':>4}  description   (noise: std on the [0, 1] image scale)")
    for t in tasks:
        print(f"{t.name:<16} {t.noise_sigma:>6.3f}  {t.sampling.get('eta', 0.5):>4}  {t.description}")
    return 0
