"""``silo evaluate``: images x tasks x methods x seeds, simulated and measured, on one process or many."""

from __future__ import annotations

import argparse

COMMAND = "evaluate"
HELP = "compare methods (silo, silo_x0, ldps, psld, naive) on clean images: degrade, restore, measure, tabulate"
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
    src = p.add_argument_group("images (clean references)")
    src.add_argument("inputs", nargs="*", help="image files or folders")
    src.add_argument("--photos", choices=["heldout", "train"],
                     help="silo-tiny's photos: heldout (evaluation) or train (tuning step sizes only)")
    src.add_argument("--photo-count", type=int, default=16, help="crops taken from --photos")
    src.add_argument("--photo-size", type=int, default=64, help="side of each --photos crop in px")
    src.add_argument("--example", action="append", default=[], metavar="NAME", help="a bundled example photo; repeatable")
    src.add_argument("--dataset", help="a datasets dataset: a save_to_disk folder or a Hub name")
    src.add_argument("--split", default="train", help="dataset split")
    src.add_argument("--image-column", default=None, help="dataset image column (default: the first image feature)")
    src.add_argument("--index", type=int, help="one dataset index")
    src.add_argument("--start", type=int, help="first dataset index (with --end)")
    src.add_argument("--end", type=int, help="first dataset index NOT used")
    src.add_argument("--list", dest="index_list", help="comma-separated dataset indices")
    src.add_argument("--convert-rgb", action="store_true", help="convert greyscale/RGBA/16-bit/CMYK inputs to RGB")
    src.add_argument("--max-pixels", type=int, default=4096 * 4096, help="refuse larger images")
    src.add_argument("--pad", action="store_true", help="pad images to a size the prior takes and crop back")
    src.add_argument("--param-draws", type=int, default=1, metavar="K",
                     help="evaluate every image under K draws of the degradation's random parameters (motion kernel, "
                          "inpainting mask): K-1 copies named NAME-drawJ, each with its own parameter seed; tasks without "
                          "random parameters run once")

    cmp = p.add_argument_group("what to compare")
    cmp.add_argument("--tasks", default="sr4", help="comma-separated task names or .yaml files (see `silo tasks`)")
    cmp.add_argument("--methods", default="silo,silo_x0,ldps,psld", help="comma-separated samplers, and naive: the measurement alone (bicubic up-sampling for SR, the "
                     "masked image for inpainting, the degraded image otherwise), the line to beat")
    cmp.add_argument("--seeds", default="1000", help="comma-separated sampling seeds")
    cmp.add_argument("--method-option", action="append", default=[], metavar="[METHOD.]NAME=V[,V...]",
                     help="a method's step size; several values sweep it; repeatable")
    cmp.add_argument("--prior", help="Hub id, diffusers folder or single file [default: shipped silo-tiny]")
    cmp.add_argument("--operator", action="append", default=[], metavar="[TASK=]PATH",
                     help="operator folder or .pt for silo/silo_x0: PATH for all tasks ({task} is replaced) or "
                          "TASK=PATH; repeatable [default: the shipped operator per task]")
    cmp.add_argument("--operator-kind", choices=["cnn", "readout", "preserve"], help="which shipped operator / .pt format")

    smp = p.add_argument_group("sampling (shared by all methods)")
    smp.add_argument("--steps", type=int, help="diffusion steps [default: the prior's card, else 999]")
    from silo.cli.restore import add_schedule_arguments

    add_schedule_arguments(smp)
    smp.add_argument("--eta", type=float, help="SILO's guidance step size [default: the operator card's "
                     "recommended_eta, else the task's]")
    smp.add_argument("--ddim-eta", type=float, default=0.0, help="DDIM stochasticity (0 = deterministic); --scheduler ddim only")
    smp.add_argument("--grad-clamp", type=float, default=1.0, help="SILO/silo_x0 gradient clamp; 0 disables")
    smp.add_argument("--clamp-measurement", action=argparse.BooleanOptionalAction, default=None,
                     help="clamp the encoded measurement to [-4, 4] [default: the preset's, else the prior card's "
                          "clamp_measurement, else the task's]")
    smp.add_argument("--noise-sigma", type=float, help="measurement noise std on the [0, 1] scale [default: the task's]")
    smp.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    smp.add_argument("--cfg-fix", action="store_true", help="with CFG, guide with the text-conditional z0 only")
    smp.add_argument("--prompt", default=None, help="prompt for text-conditioned priors [default: empty]")
    smp.add_argument("--negative-prompt", default="", help="negative prompt (with CFG)")
    smp.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on GPU)")
    smp.add_argument("--batch-size", type=int, default=1, help="images restored at once (timings are per batch step)")
    smp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (with several processes: one GPU each)")
    smp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="prior dtype")
    smp.add_argument("--timeout-minutes", type=float, default=24 * 60,
                     help="how long processes wait for each other at the final barrier")

    out = p.add_argument_group("outputs")
    out.add_argument("--output-dir", default="evaluation", help="logs go to OUTPUT/runs, tables and plots to OUTPUT")
    out.add_argument("--save", choices=["none", "image", "grid", "both"], default="image",
                     help="images written besides each log (FID/KID need 'image' or 'both')")
    out.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    out.add_argument("--no-fid", action="store_true", help="skip FID/KID in the table")
    out.add_argument("--inception-weights", help="local torch-fidelity Inception weights for FID/KID")
    out.add_argument("--no-aggregate", action="store_true", help="write logs only (aggregate later with `silo summarize`)")
    out.add_argument("--no-plots", action="store_true", help="no PNG plots")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(simulate=True)


def run(args: argparse.Namespace) -> int:
    from silo.evaluation.evaluate import evaluate_command

    return evaluate_command(args)
