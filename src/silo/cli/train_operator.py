"""``silo train-operator``: train a latent operator of any trainable kind for a task or a user's own degradation."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from silo.operators import TrainingDefaults

COMMAND = "train-operator"
HELP = "train a latent operator H for a task or your own degradation, on one process or many"
DESCRIPTION = """Train a SILO latent operator H with H(E(x)) ~= E(A(x) + n) on a folder of images or a `datasets`
dataset, for a shipped task (--task sr4), a task YAML, or your own degradation (--degradation my_deg.py:fn, a
function or no-argument class taking and returning B x 3 x H x W tensors in [-1, 1]).

The same command runs on CPU, one GPU, several GPUs (`accelerate launch -m silo train-operator ...` or
`torchrun -m silo train-operator ...`) and several machines. --output-dir becomes an operator folder that
`silo restore --operator DIR` loads, with model_card.json, checkpoints/ (resume with
--resume-from-checkpoint latest), validation/ grids and logs/.

Noise levels are standard deviations on the [0, 1] image scale, half the published code's [-1, 1] values;
each kind's default --noise-sigma-max and --lr follow the published training runs. --batch-size is per process.

With --prior silo-tiny (the shipped prior, by name or folder), the options you leave out follow the recipe that
trained its shipped operators (docs/silo-tiny.md): 64 px crops, batch 8, residual CNN at lr 1e-3 for 800 steps
(1200 with --kernel-aware) or readout at 5e-4 for 200 steps, checkpoints every 100 steps, no loader workers.
The run prints where each setting came from (given, the recipe, or the default), the validation loss at each
validation, and at the end the `silo restore` command for the new operator. One training at a time writes an
--output-dir (a lock file holds its process id; a stale one is taken over)."""

#: --device: accelerate's choice, or the CPU (accelerate's cpu=True)
DEVICES = ("auto", "cpu")
#: how the help names the silo-tiny defaults (silo.training.operator.SILO_TINY_RECIPE)
RECIPE = "with --prior silo-tiny, its recipe"


class OperatorKinds:
    """The kinds of the operator registry (``silo.operators.OPERATOR_CLASSES``) as argparse ``choices`` or a help
    value, read only when argparse needs them (help, or checking a value), so that building the ``silo`` parser
    does not import the operator classes and their libraries. Give it a ``metavar``: argparse lists the
    choices of an option without one as soon as the option is added.

    ``trainable``: only the kinds ``silo train-operator`` can train, else every registered kind.
    ``describe``: ``str()`` gives, per kind, ``describe(its training defaults)`` before its name."""

    def __init__(self, describe: Callable[[TrainingDefaults], object] | None = None, trainable: bool = True) -> None:
        self.describe, self.trainable = describe, trainable

    def _kinds(self) -> list[str]:
        from silo.operators import OPERATOR_CLASSES, trainable_kinds

        return trainable_kinds() if self.trainable else list(OPERATOR_CLASSES)

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds()

    def __iter__(self):
        return iter(self._kinds())

    def __str__(self) -> str:
        from silo.operators import OPERATOR_CLASSES

        if self.describe is None:
            return ", ".join(self._kinds())
        return ", ".join(f"{self.describe(OPERATOR_CLASSES[kind].training_defaults)} {kind}" for kind in self._kinds())


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("what to train")
    what.add_argument(
        "--prior",
        required=True,
        help="silo-tiny (the shipped prior), a Hub id, diffusers folder or single-file checkpoint",
    )
    deg = what.add_mutually_exclusive_group(required=True)
    deg.add_argument("--task", help="shipped task name (see `silo tasks`) or a task .yaml file")
    deg.add_argument(
        "--degradation",
        metavar="MODULE:CALLABLE",
        help="your degradation: a .py path or importable module, and a function or class in it",
    )
    sigma = what.add_argument(
        "--noise-sigma-max",
        type=float,
        default=None,
        help="noise std drawn per batch from U(0, this), [0, 1] scale [default: %(per_kind)s]",
    )
    sigma.per_kind = OperatorKinds(lambda d: d.noise_sigma_max)
    what.add_argument(
        "--operator-kind", choices=OperatorKinds(), metavar="KIND", default="cnn", help="operator kind: %(choices)s"
    )
    what.add_argument(
        "--operator-config",
        default=None,
        metavar="JSON",
        help="architecture overrides, e.g. '{\"channels\": [16, 32, 64, 128]}' [default: "
        f'{RECIPE}: {{"residual": true}} for cnn; else {{}}]',
    )
    what.add_argument(
        "--init-from",
        metavar="FOLDER",
        help="start from this operator folder's weights and architecture (made for the same prior, "
        "of the same kind and kernel awareness; --operator-config does not apply)",
    )
    what.add_argument(
        "--kernel-aware",
        action="store_true",
        help="blur tasks, kinds that can read a blur kernel: the operator also reads each image's blur "
        "kernel (pooled to the latent grid); for kernels that change per image, such as motion blur",
    )

    data = p.add_argument_group("data")
    src = data.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="FOLDER", help="folder of images (searched recursively)")
    src.add_argument("--dataset", metavar="NAME_OR_DIR", help="a datasets dataset: Hub name or save_to_disk folder")
    data.add_argument("--split", default="train", help="dataset split")
    data.add_argument("--image-column", default=None, help="dataset image column [default: the first image feature]")
    data.add_argument(
        "--validation-images",
        type=int,
        default=None,
        help="images held out for validation [default: 16, at most a tenth of the data]",
    )
    data.add_argument(
        "--crop-size", type=int, default=None, help=f"training crop side in pixels [default: {RECIPE}: 64; else 512]"
    )
    data.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help=f"data loading worker processes per training process [default: {RECIPE}: 0; else 2]",
    )

    opt = p.add_argument_group("optimisation")
    opt.add_argument(
        "--output-dir", required=True, metavar="DIR", help="the operator folder to write (and its run files)"
    )
    opt.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help=f"optimizer steps in total [default: {RECIPE}: 800 cnn (1200 --kernel-aware), 200 readout; else 20000]",
    )
    opt.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per process and micro-batch [default: {RECIPE}: 8; else 16]",
    )
    lr = opt.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"learning rate [default: {RECIPE}: 1e-3 cnn, 5e-4 readout; else %(per_kind)s]",
    )
    lr.per_kind = OperatorKinds(lambda d: f"{d.lr:g} ({d.optimizer})")
    opt.add_argument("--loss", choices=["l1", "l2"], default="l1")
    opt.add_argument("--clamp-target", action="store_true", help="clamp the target latent E(A(x)+n) to [-4, 4]")
    opt.add_argument("--gradient-accumulation-steps", type=int, default=1)
    opt.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    opt.add_argument(
        "--prior-dtype",
        choices=["auto", "float32", "float16", "bfloat16"],
        default="auto",
        help="dtype of the frozen prior [auto: bf16/fp16 on GPU, float32 on CPU]",
    )
    opt.add_argument("--seed", type=int, default=0)

    run_ = p.add_argument_group("run")
    run_.add_argument(
        "--validation-every",
        type=int,
        default=None,
        help="steps between validation loss (printed) + grid [default: 500]",
    )
    run_.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help=f"steps between checkpoints [default: {RECIPE}: 100; else 1000]",
    )
    run_.add_argument("--checkpoints-total-limit", type=int, default=3, help="checkpoints kept")
    run_.add_argument(
        "--resume-from-checkpoint",
        metavar="latest|PATH",
        default=None,
        help="continue from the newest checkpoint in DIR/checkpoints (latest) or a given one",
    )
    run_.add_argument(
        "--report-to",
        choices=["auto", "tensorboard", "wandb", "none"],
        default="auto",
        help="experiment tracker [auto: tensorboard when installed]",
    )
    run_.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu}",
        help="auto (accelerate's choice: a GPU where there is one, each launched process its own) or "
        "cpu (train on the CPU even where a GPU is available)",
    )
    run_.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    from silo.errors import SiloError
    from silo.training.operator import TrainOperatorConfig

    if args.device not in DEVICES:
        raise SiloError(
            f"--device must be {' or '.join(DEVICES)}, got {args.device!r} (accelerate places each process "
            "on its GPU: choose GPUs with accelerate launch, torchrun or CUDA_VISIBLE_DEVICES)"
        )
    overrides = None  # None: the recipe's or the default architecture
    if args.operator_config is not None:
        try:
            overrides = json.loads(args.operator_config)
        except json.JSONDecodeError as err:
            raise SiloError(f"--operator-config is not valid JSON: {err}") from None
        if not isinstance(overrides, dict):
            raise SiloError("--operator-config must be a JSON object")
    return TrainOperatorConfig(
        prior=args.prior,
        output=args.output_dir,
        kind=args.operator_kind,
        task=args.task,
        degradation=args.degradation,
        noise_sigma_max=args.noise_sigma_max,
        data=args.data,
        dataset=args.dataset,
        split=args.split,
        image_column=args.image_column,
        validation_images=args.validation_images,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        crop_size=args.crop_size,
        loss=args.loss,
        clamp_target=args.clamp_target,
        validation_every=args.validation_every,
        checkpoint_every=args.checkpoint_every,
        checkpoints_total_limit=args.checkpoints_total_limit,
        resume_from_checkpoint=args.resume_from_checkpoint,
        mixed_precision=args.mixed_precision,
        prior_dtype=args.prior_dtype,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        report_to=args.report_to,
        seed=args.seed,
        num_workers=args.num_workers,
        operator_config=overrides,
        init_operator=args.init_from,
        kernel_aware=args.kernel_aware,
        show_progress=not args.no_progress,
        cpu=args.device == "cpu",
    )


def restore_command(args: argparse.Namespace) -> str:
    """The ``silo restore`` line for a new operator: the same prior, the operator and the same task or
    degradation (without it restore would use its default task, for which the operator was not trained)."""
    import shlex

    what = ["--degradation", args.degradation] if args.degradation else ["--task", args.task]
    words = ["silo", "restore", "--prior", args.prior, "--operator", args.output_dir, *what]
    return " ".join(shlex.quote(w) for w in words) + " IMAGE..."


def run(args: argparse.Namespace) -> int:
    from silo.training.operator import train_operator

    card = train_operator(config_from_args(args))
    from accelerate import PartialState

    if PartialState().is_main_process:
        loss = card["final_validation_loss"]
        shown = "n/a" if loss is None else f"{loss:.4f}"
        print(
            f"operator written to {args.output_dir} ({card['kind']}, {card['steps']} steps, final validation loss "
            f"{shown}); restore with: {restore_command(args)}"
        )
    return 0
