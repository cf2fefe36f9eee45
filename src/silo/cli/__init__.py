"""The ``silo`` command line.

Every module in this package that defines ``COMMAND`` (its name), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` becomes a sub-command. Modules import heavy
libraries inside ``run`` so that ``silo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys

from silo.errors import SiloError


def _command_modules():
    import silo.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"silo.cli.{info.name}")
        if hasattr(module, "COMMAND"):
            yield module


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it says something: not None or False, and not where the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from silo import __version__

    parser = argparse.ArgumentParser(
        prog="silo",
        description="Restore degraded images with latent diffusion priors and learned latent operators (SILO).",
    )
    parser.add_argument("--version", action="version", version=f"silo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(
            module.COMMAND,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=_HelpFormatter,
            allow_abbrev=False,  # an old or misspelt option is an error, never another option
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    previous = _terminate_as_interrupt()
    try:
        return int(args._run(args) or 0)
    except SiloError as err:
        print(f"silo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except _Terminated:
        _release_claims()
        print(f"silo {args.command}: terminated; finished results are kept, rerun to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        _release_claims()
        print(f"silo {args.command}: interrupted; finished results are kept, rerun to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (``| head``): nothing left to say
        _silence_stdout()
        return 141
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _release_claims() -> None:
    """A stopped run gives back the results it had claimed, so that a rerun or another run takes them at once."""
    from silo.io.claims import release_all

    release_all()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: writes in progress clean up (their ``finally`` blocks run), then one line."""


def _terminate_as_interrupt():
    """Turn SIGTERM into :class:`_Terminated` in the main thread; the previous handler, or None if not set."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise _Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
