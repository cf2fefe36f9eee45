"""``silo methods``: the sampler registry, with what each method needs and the step sizes it takes."""

from __future__ import annotations

import argparse
import json

COMMAND = "methods"
HELP = "list the registered methods (samplers), what each needs, and their step sizes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the registry as JSON")


def run(args: argparse.Namespace) -> int:
    from silo.samplers.registry import NAIVE, SAMPLERS

    rows = []
    for spec in SAMPLERS.values():
        needs = []
        if spec.needs_operator:
            needs.append(f"a latent operator reading {' or '.join(sorted(spec.operator_inputs))}")
        if spec.needs_linear:
            needs.append("a linear degradation")
        if spec.needs_differentiable:
            needs.append("a differentiable degradation")
        rows.append(
            {
                "method": spec.name,
                "label": spec.label,
                "needs": needs,
                "options": spec.options,
                "bench_reference": spec.paired_reference,
            }
        )
    rows.append(
        {"method": NAIVE, "label": "the measurement alone", "needs": [], "options": {}, "bench_reference": None}
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        options = ", ".join(f"{k}={v:g}" for k, v in r["options"].items())
        if r["method"] == "silo":
            options = "eta (a setting: --eta)"
        print(
            f"{r['method']:<9} {r['label']}: needs {', '.join(r['needs']) or 'nothing'}"
            + (f"; options {options}" if options else "")
        )
    return 0
