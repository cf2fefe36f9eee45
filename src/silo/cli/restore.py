"""``silo restore``: restore images (or simulate degradations and measure) with SILO."""

from __future__ import annotations

import argparse
import sys

COMMAND = "restore"
HELP = "restore degraded images, or degrade clean ones with --simulate and measure the restoration"
DESCRIPTION = """Restore images with a latent diffusion prior guided by a latent operator (SILO).

Two modes. Without --simulate the inputs ARE measurements: a low-resolution photo to up-scale (sr4/sr8),
a JPEG to clean, a blurred photo (--kernel for its kernel), an image with a hole (--mask, white = known).
With --simulate the inputs are clean references: they are degraded by the task (plus noise), restored, and
PSNR/SSIM/MS-SSIM/Y-PSNR/consistency/LPIPS are computed against them.

Noise levels (--noise-sigma) are standard deviations on the [0, 1] image scale (0.01 = 1%); the published
SILO code states them on the [-1, 1] scale (its 0.02 is our 0.01).

Outputs are named NAME_TASK_METHOD_sSEED_KEY, where KEY hashes everything that changes the pixels (input,
task, method and options, settings, prior and operator weights, seed, dtype, device type). They are never
overwritten: a result whose log exists is skipped, so an interrupted batch resumes by running the same
command again, and a rerun with other settings writes a new result beside the old one."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from silo.cli.args import add_input_arguments, add_model_arguments, add_output_arguments, add_sampling_arguments

    add_input_arguments(p, "measurements (or, with --simulate, clean references)")
    mode = p.add_argument_group("what the inputs are")
    mode.add_argument(
        "--simulate",
        action="store_true",
        help="inputs are clean references: degrade them, restore, and compute metrics",
    )
    mode.add_argument("--mask", help="measurement mode, inpainting: mask image (white = known, black = fill in)")
    mode.add_argument("--kernel", help="measurement mode, blur: the blur kernel (.npy or greyscale image)")
    mdl = add_model_arguments(p)
    mdl.add_argument(
        "--task",
        default=None,
        help="task name (see `silo tasks`) or a task .yaml file [default: the preset's, else sr4]",
    )
    mdl.add_argument(
        "--degradation",
        metavar="MODULE:CALLABLE",
        help="your own degradation (a function or class taking and returning images in [-1, 1], "
        "from a .py file or module), instead of --task; noise from --noise-sigma",
    )
    mdl.add_argument(
        "--preset", help="one of the nine published runs (see README); sets prior, operator, task and settings"
    )
    mdl.add_argument(
        "--weights-dir", default="trained_ckpt", help="folder holding the published operator files (--preset)"
    )
    mdl.add_argument(
        "--method",
        default="silo",
        help="a registered sampler (`silo methods` lists them and what each needs), or naive: the "
        "measurement alone (bicubic up-sampling for SR, the masked image for inpainting)",
    )
    mdl.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a step size of the method, e.g. zeta=0.5 for ldps (`silo methods` lists them); repeatable",
    )
    smp = add_sampling_arguments(p)
    smp.add_argument(
        "--seed",
        type=int,
        help="the run's seed; each image's noise comes from it and the image itself [default: the preset's, else 1000]",
    )
    smp.add_argument(
        "--offload",
        action="append",
        default=[],
        choices=["vae", "text-encoder"],
        help="keep this part on the CPU while the sampling loop runs, moved to the device only to encode "
        "and decode (vae) or to embed the prompt (text-encoder); outputs are unchanged; methods that "
        "decode every step refuse vae; repeatable",
    )
    add_output_arguments(p, "outputs", ["image", "grid", "both"], "both")


def run(args: argparse.Namespace) -> int:
    from silo.cli.args import inputs_from, settings_from
    from silo.errors import SiloError
    from silo.evaluation.options import parse_method_options
    from silo.runs.restore import RestoreConfig, restore_inputs

    configs = parse_method_options(args.method_option, [args.method])
    if len(configs) > 1:
        raise SiloError("--method-option takes one value per option in restore (sweeps are for silo evaluate)")
    options = configs[0].option_dict
    if args.method == "silo" and "eta" in options:
        raise SiloError("SILO's step size is --eta")
    config = RestoreConfig(
        inputs=inputs_from(args),
        simulate=args.simulate,
        task=args.task,
        degradation=args.degradation,
        noise_sigma=args.noise_sigma,
        preset=args.preset,
        weights_dir=args.weights_dir,
        prior=args.prior,
        operator=args.operator,
        operator_kind=args.operator_kind,
        allow_operator_mismatch=args.allow_operator_mismatch,
        method=args.method,
        method_options=options,
        settings={**settings_from(args), "seed": args.seed},
        device=args.device,
        dtype=args.dtype,
        output_dir=args.output_dir,
        save=args.save,
        pad=args.pad,
        batch_size=args.batch_size,
        mask=args.mask,
        kernel=args.kernel,
        show_progress=not args.no_progress,
        lpips=not args.no_lpips,
        offload=list(args.offload),
        memory_limit=args.memory_limit,
    )
    report = restore_inputs(config)
    print(
        f"restored {report.done}, skipped {report.skipped} (already done, or another run is on them), "
        f"failed {len(report.failures)}",
        file=sys.stderr,
    )
    return report.exit_code
