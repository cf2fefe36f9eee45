"""``silo evaluate``: images x tasks x methods x seeds, simulated and measured, on one process or many."""

from __future__ import annotations

import argparse

COMMAND = "evaluate"
HELP = "compare methods on clean images: degrade, restore, measure, tabulate"
DESCRIPTION = """Degrade clean images with each task, restore them with each method and seed, and write one
JSON log per result (like `silo restore --simulate`) under OUTPUT/runs/, then a table (mean and 95%
interval per metric, wall time per image and per step, peak memory) as OUTPUT/aggregate.{json,csv,md}
and plots OUTPUT/plots/*_vs_time.png (needs matplotlib).

Resumable: results whose log exists are skipped. Parallel: launch it with `accelerate launch -m silo
evaluate ...` or `torchrun --nproc_per_node N -m silo evaluate ...`; process r of w takes every w-th
result; the main process aggregates after all have finished (OUTPUT must be shared by all processes).

Method options: `--method-option ldps.zeta=0.5,1,2` sets (and sweeps) a method's step size; without a
METHOD. prefix it applies to every chosen method that takes it. Options: silo: eta (else --eta, else the
operator card's recommended_eta, else the task's); silo_x0: step; ldps: zeta; psld: zeta, gamma. Defaults
(silo_x0 step 2, ldps zeta 0.125, psld zeta 0.125 and gamma 0.001) were tuned on silo-tiny's training photos
(`--photos train`), see docs/evaluation.md."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from silo.cli.args import add_input_arguments, add_model_arguments, add_output_arguments, add_sampling_arguments

    add_input_arguments(p, "clean references")
    cmp = p.add_argument_group("what to compare")
    cmp.add_argument("--tasks", default="sr4", help="comma-separated task names or .yaml files (see `silo tasks`)")
    cmp.add_argument("--methods", default="silo,silo_x0,ldps,psld",
                     help="comma-separated registered samplers (`silo methods`), and naive: the measurement alone "
                          "(bicubic up-sampling for SR, the masked image for inpainting), the line to beat")
    cmp.add_argument("--seeds", default="1000", help="comma-separated run seeds")
    cmp.add_argument("--method-option", action="append", default=[], metavar="[METHOD.]NAME=V[,V...]",
                     help="a method's step size; several values sweep it; repeatable")
    add_model_arguments(p)
    smp = add_sampling_arguments(p)
    smp.add_argument("--timeout-minutes", type=float, default=24 * 60,
                     help="how long processes wait for each other at the final barrier")
    out = add_output_arguments(p, "evaluation", ["none", "image", "grid", "both"], "image")
    out.add_argument("--no-fid", action="store_true", help="skip FID/KID in the table")
    out.add_argument("--inception-weights", help="local torch-fidelity Inception weights for FID/KID")
    out.add_argument("--no-aggregate", action="store_true", help="write logs only (aggregate later with `silo summarize`)")
    out.add_argument("--no-plots", action="store_true", help="no PNG plots")


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    from silo.cli.args import inputs_from, settings_from
    from silo.errors import SiloError
    from silo.runs.evaluate import EvaluateConfig, evaluate

    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        raise SiloError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    inputs = inputs_from(args)
    if not (inputs.files or inputs.examples or inputs.dataset or inputs.photos):
        raise SiloError("nothing to evaluate: give image files or folders, --dataset, --example or --photos heldout")
    config = EvaluateConfig(
        inputs=inputs, tasks=_split(args.tasks), methods=_split(args.methods), method_options=args.method_option,
        seeds=seeds, noise_sigma=args.noise_sigma, prior=args.prior, operator=args.operator,
        operator_kind=args.operator_kind, settings=settings_from(args), device=args.device, dtype=args.dtype,
        output_dir=args.output_dir, save=args.save, pad=args.pad, batch_size=args.batch_size, lpips=not args.no_lpips,
        fid=not args.no_fid, inception_weights=args.inception_weights, aggregate=not args.no_aggregate,
        plots=not args.no_plots, show_progress=not args.no_progress, timeout_minutes=args.timeout_minutes)
    return evaluate(config).exit_code
