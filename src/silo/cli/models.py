"""``silo models``: what is shipped inside the package, with its model card."""

from __future__ import annotations

import argparse
import json

COMMAND = "models"
HELP = "list the shipped models (silo-tiny prior and operators) with their model cards"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the model card as JSON")


def run(args: argparse.Namespace) -> int:
    from silo.models import shipped_card, shipped_root

    card = shipped_card()
    root = shipped_root()
    if card is None:
        print(f"no shipped models in this build ({root} has no model_card.json); pass --prior and --operator")
        return 0
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    print(f"silo-tiny in {root}")
    prior = card.get("prior", {})
    print(f"  prior: {prior.get('description', '')}")
    for key, value in prior.get("metrics", {}).items():
        print(f"    {key}: {value}")
    if "default_steps" in card:
        clamp = card.get("clamp_measurement")
        print(
            f"  sampling defaults: {card['default_steps']} steps, {card.get('default_scheduler', 'ddpm').upper()}"
            + ("" if clamp is None else f", measurement clamp {'on' if clamp else 'off'}")
        )
    print("  operators:")
    defaults = card.get("default_operator", {})
    for name, op in sorted(card.get("operators", {}).items()):
        mark = " (default)" if defaults.get(op.get("task")) == op.get("kind") else ""
        print(f"    {name}{mark}: {op.get('summary', '')}")
    return 0
