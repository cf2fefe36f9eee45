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
operator card's recommended_eta, else the task's); silo_x0: step; ldps: zeta; psld: zeta, gamma; resample: zeta,
gamma, every,
iterations, lr; daps and silo_daps: lr, beta, rho, langevin_steps, ode_steps (`silo methods` lists them with
their defaults). A prior card may tune them per task (silo-tiny's are tuned on its training photos,
`--photos train`, see docs/evaluation.md); the log of each result names the source of every value.

Frontier: `--sweep-steps 10,25,50 --start-strength 1` runs every method from noise at each step count;
the table then gains OUTPUT/frontier.{md,json}: per task, PSNR and SSIM against wall time per image, with
the points on the Pareto front (no other point has higher PSNR at equal or lower time) marked."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from silo.cli.args import add_input_arguments, add_model_arguments, add_output_arguments, add_sampling_arguments

    add_input_arguments(p, "clean references")
    cmp = p.add_argument_group("what to compare")
    cmp.add_argument(
        "--tasks",
        default=None,
        help="comma-separated task names or .yaml files (see `silo tasks`) [default: sr4, none with --degradation]",
    )
    cmp.add_argument(
        "--degradation",
        action="append",
        default=[],
        metavar="MODULE:CALLABLE",
        help="your own degradation, as in silo restore (a .py path or module, and a function or class "
        "in it), evaluated beside --tasks; repeatable",
    )
    cmp.add_argument(
        "--methods",
        default="silo,silo_x0,ldps,psld",
        help="comma-separated registered samplers (`silo methods`), and naive: the measurement alone "
        "(bicubic up-sampling for SR, the masked image for inpainting), the line to beat",
    )
    cmp.add_argument("--seeds", default="1000", help="comma-separated run seeds")
    cmp.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="[METHOD.]NAME=V[,V...]",
        help="a method's step size; several values sweep it; repeatable",
    )
    cmp.add_argument(
        "--sweep-steps",
        metavar="N[,N...]",
        help="run every method at each of these step counts (e.g. 10,25,50,100), for a quality-against-"
        "time frontier: OUTPUT/frontier.{md,json} and OUTPUT/plots/frontier_TASK.png mark the "
        "results no other beats at equal or lower time [default: --steps only]",
    )
    add_model_arguments(p)
    smp = add_sampling_arguments(p)
    smp.add_argument(
        "--timeout-minutes",
        type=float,
        default=24 * 60,
        help="how long processes wait for each other at the final barrier",
    )
    out = add_output_arguments(p, "evaluation", ["none", "image", "grid", "both"], "image")
    out.add_argument("--no-fid", action="store_true", help="skip FID/KID in the table")
    out.add_argument("--inception-weights", help="local torch-fidelity Inception weights for FID/KID")
    out.add_argument(
        "--no-aggregate", action="store_true", help="write logs only (aggregate later with `silo summarize`)"
    )
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
    try:
        sweep_steps = [int(s) for s in _split(args.sweep_steps or "")]
    except ValueError:
        raise SiloError(f"--sweep-steps must be comma-separated integers, got {args.sweep_steps!r}") from None
    if args.sweep_steps is not None and (not sweep_steps or min(sweep_steps) < 1):
        raise SiloError(f"--sweep-steps must be step counts >= 1, got {args.sweep_steps!r}")
    inputs = inputs_from(args)
    if not (inputs.files or inputs.examples or inputs.dataset or inputs.photos):
        raise SiloError("nothing to evaluate: give image files or folders, --dataset, --example or --photos heldout")
    config = EvaluateConfig(
        inputs=inputs,
        tasks=_split(args.tasks) if args.tasks is not None else ([] if args.degradation else ["sr4"]),
        degradations=args.degradation,
        methods=_split(args.methods),
        method_options=args.method_option,
        seeds=seeds,
        sweep_steps=sweep_steps,
        noise_sigma=args.noise_sigma,
        prior=args.prior,
        operator=args.operator,
        operator_kind=args.operator_kind,
        allow_operator_mismatch=args.allow_operator_mismatch,
        settings=settings_from(args),
        device=args.device,
        dtype=args.dtype,
        output_dir=args.output_dir,
        save=args.save,
        pad=args.pad,
        batch_size=args.batch_size,
        lpips=not args.no_lpips,
        fid=not args.no_fid,
        inception_weights=args.inception_weights,
        aggregate=not args.no_aggregate,
        plots=not args.no_plots,
        show_progress=not args.no_progress,
        timeout_minutes=args.timeout_minutes,
        memory_limit=args.memory_limit,
    )
    return evaluate(config).exit_code
