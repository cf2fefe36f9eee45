"""Options shared by the commands, defined once, and their translation into the library's configs.

One word per concept: ``--operator-kind``, ``--crop-size``, ``--output-dir``, ``--device``. Setting options
default to None ("not set") so that :func:`silo.settings.resolve` can tell a user's value from a card's; the
help texts name each setting's precedence. Nothing here imports torch (``silo --help`` stays fast).
"""

from __future__ import annotations

import argparse
from typing import Any

#: the sampling settings a command line can set, as ``dest`` names (see silo.settings.SETTING_NAMES)
SETTING_DESTS = (
    "steps",
    "scheduler",
    "eta",
    "start_strength",
    "ddim_eta",
    "grad_clamp",
    "clamp_measurement",
    "guidance_scale",
    "cfg_fix",
    "prompt",
    "negative_prompt",
    "deterministic",
    "tile_size",
    "tile_overlap",
    "keep_known",
    "seam_feather",
    "consistency_steps",
)


def add_input_arguments(p: argparse.ArgumentParser, what: str = "images") -> None:
    src = p.add_argument_group("inputs")
    src.add_argument("inputs", nargs="*", help=f"{what}: image files or folders")
    src.add_argument(
        "--example",
        action="append",
        default=[],
        metavar="NAME",
        help="a bundled example photo (e.g. astronaut); implies --simulate; repeatable",
    )
    src.add_argument(
        "--photos",
        choices=["heldout", "train"],
        help="crops of silo-tiny's photos: heldout (evaluation) or train (tuning step sizes only); implies --simulate",
    )
    src.add_argument("--photo-count", type=int, default=16, help="crops taken from --photos")
    src.add_argument("--photo-size", type=int, default=64, help="side of each --photos crop in px")
    src.add_argument("--dataset", help="a datasets dataset: a save_to_disk folder or a Hub name")
    src.add_argument("--split", default="train", help="dataset split")
    src.add_argument("--image-column", default=None, help="dataset image column (default: the first image feature)")
    src.add_argument("--index", type=int, help="one dataset index")
    src.add_argument("--start", type=int, help="first dataset index (with --end)")
    src.add_argument("--end", type=int, help="first dataset index NOT used")
    src.add_argument("--list", dest="index_list", help="comma-separated dataset indices, e.g. 1,5,78")
    src.add_argument("--convert-rgb", action="store_true", help="convert greyscale/RGBA/16-bit/CMYK inputs to RGB")
    src.add_argument("--max-pixels", type=int, default=4096 * 4096, help="refuse larger images")
    src.add_argument(
        "--pad", action="store_true", help="pad images to a size the prior takes (reflection) and crop the result back"
    )
    src.add_argument(
        "--param-draws",
        type=int,
        default=1,
        metavar="K",
        help="measure every image under K draws of the degradation's random parameters (motion kernel, "
        "inpainting mask): K-1 copies named NAME-drawJ, each with its own parameter seed; "
        "degradations without random parameters run once",
    )


def add_model_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    mdl = p.add_argument_group("models")
    mdl.add_argument(
        "--prior",
        help="silo-tiny (the shipped prior), a Hub id, diffusers folder or single-file checkpoint [default: silo-tiny]",
    )
    mdl.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="[TASK=]PATH",
        help="operator folder (save_pretrained), published .pt file or Hub repo id "
        "(OWNER/NAME[/SUBFOLDER], read from the Hub cache; HF_HUB_OFFLINE=1: the cache only), for "
        "the methods guided by one: PATH for every task ({task} is replaced) or TASK=PATH; "
        "repeatable [default: with the shipped prior, the shipped operator of the task]",
    )
    mdl.add_argument(
        "--operator-kind",
        help="which shipped operator (cnn, readout, ...; `silo models` lists them), or the format of a "
        "published .pt file [default: the model card's choice per task]",
    )
    mdl.add_argument(
        "--allow-operator-mismatch",
        action="store_true",
        help="use an --operator whose model card names another degradation (or another version of "
        "your function) than the one restored; refused without it; said on stderr and kept in "
        "each result's log (its command line)",
    )
    return mdl


def add_sampling_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    smp = p.add_argument_group("sampling (every method alike; precedence in docs/architecture.md)")
    smp.add_argument(
        "--steps", type=int, help="diffusion steps [default: the preset's, else the prior card's, else 999]"
    )
    smp.add_argument(
        "--scheduler",
        help="ddpm, ddim, or any variance-preserving diffusers scheduler class (e.g. "
        "DPMSolverMultistepScheduler) [default: ddpm with a preset, else the prior card's default_scheduler, "
        "else ddpm]",
    )
    smp.add_argument(
        "--start-strength",
        type=float,
        help="fraction of the noise schedule to run, in (0, 1]: below 1, start from the encoded measurement "
        "noised to that level (a warm start) [default: 1 with a preset, else the card of the operator SILO uses on "
        "the task: recommended_start_strength, "
        "else the prior card's default_start_strength, else the task's, else 1]",
    )
    smp.add_argument(
        "--eta",
        type=float,
        help="SILO's guidance step size [default: the preset's, else the operator "
        "card's recommended_eta scaled to the image side, else the task's, else 0.5]",
    )
    smp.add_argument("--ddim-eta", type=float, help="DDIM's own stochasticity (not the guidance step) [default: 0]")
    smp.add_argument("--grad-clamp", type=float, help="clamp the guidance gradient to [-c, c]; 0 disables [default: 1]")
    smp.add_argument(
        "--clamp-measurement",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clamp the encoded measurement to [-4, 4] [default: the preset's, else the prior card's "
        "clamp_measurement, else the task's]",
    )
    smp.add_argument(
        "--noise-sigma", type=float, help="measurement noise std on the [0, 1] scale [default: the task's]"
    )
    smp.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale [default: 1 = off]")
    smp.add_argument(
        "--cfg-fix", action="store_true", default=None, help="with CFG, guide with the text-conditional z0 only"
    )
    smp.add_argument("--prompt", help="prompt for text-conditioned priors [default: the preset's, else empty]")
    smp.add_argument("--negative-prompt", help="negative prompt (with CFG) [default: empty]")
    smp.add_argument("--deterministic", action="store_true", default=None, help="deterministic kernels (slower on GPU)")
    smp.add_argument(
        "--tile-size",
        type=int,
        metavar="PX",
        help="restore images with a side over PX in overlapping tiles blended at every step (the UNet and "
        "the operator hold one tile's activations at a time); 0 never tiles [default: 512]",
    )
    smp.add_argument(
        "--tile-overlap",
        type=int,
        metavar="PX",
        help="pixels shared by neighbouring tiles [default: a quarter of the tile]",
    )
    smp.add_argument(
        "--keep-known",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="inpainting: the output keeps the measurement's known pixels exactly, the seam feathered "
        "into the hole [default: on]",
    )
    smp.add_argument(
        "--seam-feather",
        type=int,
        metavar="PX",
        help="with --keep-known: pixels of the hole over which the known side's residual fades out [default: 4]",
    )
    smp.add_argument(
        "--consistency-steps",
        type=int,
        metavar="N",
        help="N gradient steps on ||A(x) - y|| from the decoded output (exact line search) [default: 0]",
    )
    smp.add_argument("--batch-size", type=int, default=1, help="images restored at once (same size)")
    smp.add_argument(
        "--memory-limit",
        type=float,
        metavar="GIB",
        help="refuse, before sampling, an image whose estimated peak memory (per method and prior "
        "architecture, measured) is over GIB; 0 turns the check off [default: the memory the "
        "device has available]",
    )
    smp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    smp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="prior dtype")
    return smp


def add_output_arguments(p: argparse.ArgumentParser, default_dir: str, saves: list[str], default_save: str):
    out = p.add_argument_group("outputs")
    out.add_argument("--output-dir", default=default_dir, help="where results go")
    out.add_argument("--save", choices=saves, default=default_save, help="what to write besides each JSON log")
    out.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    return out


def inputs_from(args: argparse.Namespace):
    from silo.runs.items import Inputs

    return Inputs(
        files=list(args.inputs),
        examples=list(args.example),
        dataset=args.dataset,
        split=args.split,
        image_column=args.image_column,
        index=args.index,
        start=args.start,
        end=args.end,
        index_list=args.index_list,
        photos=args.photos,
        photo_count=args.photo_count,
        photo_size=args.photo_size,
        convert_rgb=args.convert_rgb,
        max_pixels=args.max_pixels,
        param_draws=args.param_draws,
    )


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user set on the command line (None: not set)."""
    return {name: getattr(args, name) for name in SETTING_DESTS if getattr(args, name, None) is not None}
