"""``fedloom``: the entry point, its global options, logging setup and subcommand dispatch.

Only the CLI configures logging handlers; it restores the logging state when it
returns, so calling `main` in-process (tests, notebooks) leaves no trace.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fedloom import __version__
from fedloom.cli import certs, client, dashboard, launch, package, relay, runs, server, simulate

__all__ = ["build_parser", "main"]

_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


def build_parser() -> argparse.ArgumentParser:
    """The ``fedloom`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fedloom",
        description="Federated learning: simulate federations from TOML configs, or deploy "
        "them over gRPC (server, client, certs) and across local processes (launch).",
    )
    parser.add_argument("--version", action="version", version=f"fedloom {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v for progress details, -vv for debugging",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    simulate.add_parser(subparsers)
    server.add_parser(subparsers)
    client.add_parser(subparsers)
    certs.add_parser(subparsers)
    launch.add_parser(subparsers)
    runs.add_parser(subparsers)
    dashboard.add_parser(subparsers)
    package.add_parser(subparsers)
    relay.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``fedloom`` command with `argv` (default: ``sys.argv[1:]``).

    Args:
        argv: the arguments after the program name.

    Returns:
        The exit status: 0 on success, 1 when a run failed, 2 for bad usage or config.

    Example:
        >>> main(["--version"])
        fedloom 0.1.0
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors exit from argparse
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    with _logging(args.verbose):
        return handler(args)


@contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """Send fedloom's log records at the chosen level to stderr while the command runs."""
    logger = logging.getLogger("fedloom")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    logger.setLevel(_LEVELS[min(verbosity, len(_LEVELS) - 1)])
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


if __name__ == "__main__":
    raise SystemExit(main())
