"""``silo train-prior``: train (and resume, and export) the silo-tiny VAE or latent UNet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COMMAND = "train-prior"
HELP = "train the silo-tiny prior (stage vae, then unet) with checkpoints, resume and export"
DESCRIPTION = (
    "Train one stage of the silo-tiny latent diffusion prior on a folder written by `silo build-data`. "
    "Checkpoints go to --output-dir's checkpoints/ every --checkpoint-every steps; rerun with "
    "--resume-from-checkpoint latest to continue. --export DIR writes the diffusers-layout prior "
    "(vae/ or unet/ + scheduler/) from the latest checkpoint when the run ends (at --max-steps, --stop-at "
    "or --time-limit). --init-from PRIOR fine-tunes an exported prior; --freeze-encoder (stage vae) trains "
    "its decoder alone. A resumed run keeps the --init-from, --freeze-encoder and --loss it was started with."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=["vae", "unet"], required=True)
    parser.add_argument("--data", required=True, help="folder written by `silo build-data`")
    parser.add_argument(
        "--output-dir",
        required=True,
        metavar="DIR",
        help="run folder: checkpoints/, config.json, log.jsonl, tensorboard/",
    )
    parser.add_argument("--vae", default=None, help="stage unet: exported VAE folder (PRIOR/vae)")
    parser.add_argument("--resume-from-checkpoint", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help=f"total steps (also the cosine LR horizon) {_per_stage('max_steps')}",
    )
    parser.add_argument("--stop-at", type=int, default=None, help="stop at this step this time (resume later)")
    parser.add_argument("--batch-size", type=int, default=None, help=f"crops per step {_per_stage('batch_size')}")
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate {_per_stage('lr')}")
    parser.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help=f"training crop side in pixels (the UNet sees latents of a quarter of it) {_per_stage('crop_size')}",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="checkpoint and stop after this much training time (the LR horizon stays --max-steps)",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="PRIOR",
        help="fine-tune: start from the weights of an exported prior folder (same architecture)",
    )
    parser.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="stage vae with --init-from: train the decoder only (the latent space stays the same)",
    )
    parser.add_argument(
        "--loss",
        choices=["l1", "mse"],
        default=None,
        help="stage vae: reconstruction loss (default l1; mse optimises PSNR, for fine-tuning)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--checkpoint-every", type=int, default=None, help=f"steps between checkpoints {_per_stage('checkpoint_every')}"
    )
    parser.add_argument(
        "--validation-every",
        type=int,
        default=None,
        help=f"steps between held-out evaluations (VAE: PSNR/SSIM; UNet: v-loss) {_per_stage('validation_every')}",
    )
    parser.add_argument(
        "--prior-config",
        default=None,
        metavar="JSON",
        help="overrides of the stage's model config (VAE or UNet), e.g. '{\"latent_channels\": 8}' "
        "[default: none, the architecture of silo.priors.tiny; a resumed run keeps its own]",
    )
    parser.add_argument("--export", default=None, metavar="DIR", help="write the prior folder when done")
    parser.add_argument("--no-progress", action="store_true")


#: per-stage defaults of the options (by ``dest``) chosen by the probes in docs/results.md ("Training silo-tiny")
DEFAULTS = {
    "vae": dict(max_steps=12000, batch_size=8, lr=1e-3, crop_size=64, checkpoint_every=200, validation_every=200),
    "unet": dict(max_steps=20000, batch_size=16, lr=4e-4, crop_size=128, checkpoint_every=200, validation_every=200),
}
#: options whose TrainConfig field has another name (the fields are saved in every run and checkpoint)
CONFIG_FIELD = {"crop_size": "crop", "validation_every": "eval_every"}


def _per_stage(dest: str) -> str:
    return f"[default: {DEFAULTS['vae'][dest]:g} vae, {DEFAULTS['unet'][dest]:g} unet]"


def run(args: argparse.Namespace) -> int:
    from silo.errors import SiloError
    from silo.training.prior import TrainConfig, resolve_resume, train

    overrides = {}
    if args.prior_config:
        try:
            overrides = json.loads(args.prior_config)
        except json.JSONDecodeError as err:
            raise SiloError(f"--prior-config is not valid JSON: {err}") from None
        if not isinstance(overrides, dict):
            raise SiloError("--prior-config must be a JSON object")
    opts = {}
    for dest, default in DEFAULTS[args.stage].items():
        value = getattr(args, dest)
        opts[CONFIG_FIELD.get(dest, dest)] = default if value is None else value
    previous = resolve_resume(args.output_dir, args.resume_from_checkpoint)
    init_from = str(Path(args.init_from).resolve()) if args.init_from else None
    freeze = args.freeze_encoder
    if args.loss and args.stage != "vae":
        raise SiloError("--loss is the VAE's reconstruction loss: the UNet trains on the v-prediction MSE")
    loss = args.loss or "l1"
    if previous is not None:  # a resumed run keeps what it was started with
        before = json.loads((previous / "trainer_state.json").read_text())["config"]
        overrides = overrides if args.prior_config else before.get("model", {})
        init_from = before.get("init_from") or init_from
        if args.freeze_encoder and not before.get("freeze_encoder"):
            raise SiloError(f"{previous} was trained without --freeze-encoder: resume it without the flag")
        freeze = bool(before.get("freeze_encoder"))
        loss = before.get("loss", "l1")
        if args.loss and args.loss != loss:
            raise SiloError(f"{previous} was trained with --loss {loss}: resume it with that loss")
    cfg = TrainConfig(
        stage=args.stage,
        data=args.data,
        output=args.output_dir,
        vae=args.vae,
        seed=args.seed,
        threads=args.threads,
        stop_at=args.stop_at,
        time_limit=args.time_limit,
        init_from=init_from,
        freeze_encoder=freeze,
        loss=loss,
        model=overrides,
        progress=not args.no_progress,
        **opts,
    )
    record = train(cfg, resume=args.resume_from_checkpoint)
    if record:
        print(json.dumps(record))
    if args.export:
        from silo.training.prior_export import export

        path = export(cfg, args.export)
        print(f"exported {args.stage} to {path}")
    return 0
