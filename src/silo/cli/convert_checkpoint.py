"""``silo convert-checkpoint``: a published SILO operator ``.pt`` file -> our safetensors operator folder."""

from __future__ import annotations

import argparse

from silo.cli.train_operator import OperatorKinds

COMMAND = "convert-checkpoint"
HELP = "convert a published SILO operator checkpoint (.pt) into a safetensors operator folder"
DESCRIPTION = (
    "Read one of the authors' published operator files (CNN, readout with or without the inpainting mask "
    "channel, or the preserve network; the format is detected from its keys) with safe unpickling, and "
    "write it as an operator folder (config.json + safetensors) that --operator accepts. Never overwrites."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="published checkpoint file, e.g. trained_ckpt/.../model.pt")
    parser.add_argument("dst", help="new operator folder to write (must not exist)")
    parser.add_argument(
        "--operator-kind",
        choices=OperatorKinds(trainable=False),  # the registry's kinds, read when needed (no torch import here)
        metavar="KIND",
        default=None,
        help="expected operator kind, one of %(choices)s; a file holding another kind is refused "
        "[default: detect it from the keys]",
    )


def run(args: argparse.Namespace) -> int:
    from silo.operators.published import convert_published

    operator = convert_published(args.src, args.dst, args.operator_kind)
    params = sum(p.numel() for p in operator.parameters())
    print(f"wrote {operator.kind} operator ({params / 1e6:.2f} M parameters) to {args.dst}")
    return 0
