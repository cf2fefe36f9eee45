"""``silo serve``: a web page to restore photos, on this machine, through the same runner as ``silo restore``."""

from __future__ import annotations

import argparse
import os
import sys

COMMAND = "serve"
HELP = "serve a web page that restores photos (needs the web extra: pip install 'silo-restore[web]')"
DESCRIPTION = """Serve a web page (Gradio) that restores photos with the same runner, settings and logs as
`silo restore`: upload a photo or pick a bundled example, choose the task and a method that applies to it,
restore it as a measurement or simulate a degradation and measure, paint an inpainting mask, upload or draw a
blur kernel, compare two to four methods side by side. Every result is also written to --output-dir.

The page binds to 127.0.0.1 (this machine only) unless --host says otherwise, and is shared publicly only
with --share. It runs the shipped silo-tiny prior offline by default. One sampling job runs at a time; other
jobs wait in a queue and see their place in it."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    net = p.add_argument_group("server")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; 0.0.0.0 opens the page to the network [default: 127.0.0.1, this machine only]",
    )
    net.add_argument("--port", type=int, default=7860, help="port to listen on")
    net.add_argument(
        "--share",
        action="store_true",
        help="also publish the page through a public Gradio share link (off unless given)",
    )
    mdl = p.add_argument_group("models")
    mdl.add_argument("--prior", help="Hub id, diffusers folder or single-file checkpoint [default: shipped silo-tiny]")
    mdl.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="[TASK=]PATH",
        help="operator folder or published .pt file: PATH for every task ({task} is replaced) or "
        "TASK=PATH; repeatable [default: with the shipped prior, the shipped operator of the task]",
    )
    mdl.add_argument(
        "--operator-kind", help="which shipped operator (cnn, readout, ...) [default: the model card's choice per task]"
    )
    mdl.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    mdl.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="prior dtype")
    out = p.add_argument_group("inputs and outputs")
    out.add_argument("--output-dir", default="outputs", help="where every result of the page is written")
    out.add_argument("--max-pixels", type=int, default=2048 * 2048, help="refuse larger uploads")
    out.add_argument("--no-lpips", action="store_true", help="skip LPIPS")


def run(args: argparse.Namespace) -> int:
    """Load the models once, then serve the page until interrupted (Ctrl-C)."""
    from silo.errors import SiloError

    if args.max_pixels < 1:
        raise SiloError("--max-pixels must be >= 1")
    if not 0 < args.port < 65536:
        raise SiloError(f"--port must be in 1..65535, got {args.port}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before Gradio is imported: it never calls home
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SiloError("the web page needs Gradio: pip install 'silo-restore[web]' (or pip install gradio)") from None
    from silo.web.app import check_port, launch
    from silo.web.service import Service

    check_port(args.host, args.port)  # a taken port is said before the models load

    service = Service.start(
        args.prior,
        args.operator,
        args.operator_kind,
        args.device,
        args.dtype,
        args.output_dir,
        args.max_pixels,
        not args.no_lpips,
    )
    shown = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    print(
        f"silo serve: prior {service.models.prior_source} on {service.models.device}; results go to "
        f"{service.output_dir.resolve()}",
        file=sys.stderr,
    )
    print(f"silo serve: open http://{shown}:{args.port} (Ctrl-C stops)", file=sys.stderr, flush=True)
    launch(service, args.host, args.port, args.share)
    return 0
