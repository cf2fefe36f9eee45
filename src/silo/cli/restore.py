"""``silo restore``: restore images (or simulate degradations and measure) with SILO."""

from __future__ import annotations

import argparse

COMMAND = "restore"
HELP = "restore degraded images, or degrade clean ones with --simulate and measure the restoration"
DESCRIPTION = """Restore images with a latent diffusion prior guided by a latent operator (SILO).

Two modes. Without --simulate the inputs ARE measurements: a low-resolution photo to up-scale (sr4/sr8),
a JPEG to clean, a blurred photo (--kernel for its kernel), an image with a hole (--mask, white = known).
With --simulate the inputs are clean references: they are degraded by the task (plus noise), restored, and
PSNR/SSIM/MS-SSIM/Y-PSNR/consistency/LPIPS are computed against them.

Noise levels (--noise-sigma) are standard deviations on the [0, 1] image scale (0.01 = 1%); the published
SILO code states them on the [-1, 1] scale (its 0.02 is our 0.01).

Outputs, named after each input, are never overwritten: an input whose log already exists is skipped, so
an interrupted batch resumes by running the same command again."""


def add_schedule_arguments(group) -> None:
    """``--scheduler`` and ``--start-strength``: how sampling starts, shared by restore and evaluate."""
    group.add_argument("--scheduler", choices=["ddpm", "ddim"], default=None,
                       help="sampling scheduler [default: the prior card's default_scheduler, else ddpm]")
    group.add_argument("--start-strength", type=float, default=None,
                       help="fraction of the noise schedule to run, in (0, 1]: below 1, start from the encoded measurement "
                       "noised to that level (a warm start; every method alike) [default: the operator card's "
                       "recommended_start_strength, else the prior card's default_start_strength, else the task's, else 1]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("inputs")
    src.add_argument("inputs", nargs="*", help="image files or folders")
    src.add_argument("--example", action="append", default=[], metavar="NAME",
                     help="a bundled example photo (e.g. astronaut); implies --simulate; repeatable")
    src.add_argument("--dataset", help="a datasets dataset: a save_to_disk folder or a Hub name")
    src.add_argument("--split", default="train", help="dataset split")
    src.add_argument("--image-column", default=None, help="dataset image column (default: the first image feature)")
    src.add_argument("--index", type=int, help="one dataset index")
    src.add_argument("--start", type=int, help="first dataset index (with --end)")
    src.add_argument("--end", type=int, help="first dataset index NOT restored")
    src.add_argument("--list", dest="index_list", help="comma-separated dataset indices, e.g. 1,5,78")
    src.add_argument("--simulate", action="store_true",
                     help="inputs are clean references: degrade them, restore, and compute metrics")
    src.add_argument("--mask", help="measurement mode, inpainting: mask image (white = known, black = fill in)")
    src.add_argument("--kernel", help="measurement mode, blur: the blur kernel (.npy or greyscale image)")
    src.add_argument("--convert-rgb", action="store_true", help="convert greyscale/RGBA/16-bit/CMYK inputs to RGB")
    src.add_argument("--max-pixels", type=int, default=4096 * 4096, help="refuse larger images")
    src.add_argument("--pad", action="store_true",
                     help="pad images to a size the prior takes (reflection) and crop the result back")

    mdl = p.add_argument_group("models")
    mdl.add_argument("--task", default=None, help="task name (see `silo tasks`) or a task .yaml file [default: sr4]")
    mdl.add_argument("--degradation", metavar="MODULE:CALLABLE",
                     help="your own degradation (a function or class taking and returning images in [-1, 1], "
                          "from a .py file or module), instead of --task; noise from --noise-sigma")
    mdl.add_argument("--preset", help="one of the nine published runs (see README); sets prior, operator, task and settings")
    mdl.add_argument("--weights-dir", default="trained_ckpt", help="folder holding the published operator files (--preset)")
    mdl.add_argument("--prior", help="Hub id, diffusers folder or single-file checkpoint [default: shipped silo-tiny]")
    mdl.add_argument("--operator", help="operator folder (save_pretrained) or published .pt file [default: shipped]")
    mdl.add_argument("--operator-kind", choices=["cnn", "readout", "preserve"],
                     help="which shipped operator, or the format of a published .pt file")
    mdl.add_argument("--method", default="silo",
                     help="sampler: silo, silo_x0 (one UNet forward per step), ldps (Latent-DPS), psld; or naive "
                     "(the measurement alone: bicubic up-sampling for SR, the masked image for inpainting, the degraded "
                     "image otherwise)")
    mdl.add_argument("--method-option", action="append", default=[], metavar="NAME=VALUE",
                     help="a step size of the method, e.g. zeta=0.5 for ldps (see docs/evaluation.md); repeatable")

    smp = p.add_argument_group("sampling")
    smp.add_argument("--steps", type=int, help="diffusion steps [default: the prior's card, else 999]")
    add_schedule_arguments(smp)
    smp.add_argument("--eta", type=float, help="guidance step size [default: the preset's, else the operator card's "
                     "recommended_eta, else the task's]")
    smp.add_argument("--ddim-eta", type=float, default=0.0, help="DDIM stochasticity (0 = deterministic DDIM); --scheduler ddim only")
    smp.add_argument("--grad-clamp", type=float, default=1.0, help="clamp the guidance gradient to [-c, c]; 0 disables")
    smp.add_argument("--clamp-measurement", action=argparse.BooleanOptionalAction, default=None,
                     help="clamp the encoded measurement to [-4, 4] [default: the preset's, else the prior card's "
                          "clamp_measurement, else the task's]")
    smp.add_argument("--noise-sigma", type=float, help="measurement noise std on the [0, 1] scale [default: the task's]")
    smp.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    smp.add_argument("--cfg-fix", action="store_true", help="with CFG, guide with the text-conditional z0 only")
    smp.add_argument("--prompt", default=None, help="prompt for text-conditioned priors [default: empty]")
    smp.add_argument("--negative-prompt", default="", help="negative prompt (with CFG)")
    smp.add_argument("--seed", type=int, default=1000, help="seed of every image's sampling noise")
    smp.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on GPU)")
    smp.add_argument("--batch-size", type=int, default=1, help="images restored at once (same size)")
    smp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    smp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="prior dtype")

    out = p.add_argument_group("outputs")
    out.add_argument("--output-dir", default="outputs", help="where results go")
    out.add_argument("--save", choices=["image", "grid", "both"], default="both", help="what to write besides the JSON log")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from silo.cli._restore_impl import restore_command

    return restore_command(args)
