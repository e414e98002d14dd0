"""Option types and helpers shared by the ``server``, ``client``, ``certs`` and ``launch`` commands.

Argument types raise `argparse.ArgumentTypeError`, so argparse reports a bad value
as a usage error (exit 2) that names the option.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from fedloom.errors import ConfigError

__all__ = [
    "SubParsers",
    "fail",
    "host_port",
    "non_negative_int",
    "positive_int",
    "read_secret",
    "warn_insecure",
]

SubParsers = argparse._SubParsersAction  # argparse exposes no public name for it


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
    return value


def host_port(text: str) -> str:
    """An argparse type: ``HOST:PORT`` with a port in 0..65535 (0: any free port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080), got {text!r}"
        )
    return text


def fail(error: Exception | str, *, status: int) -> int:
    """Print ``error: <message>`` to stderr and return `status`."""
    print(f"error: {error}", file=sys.stderr)
    return status


def read_secret(path: Path, *, what: str, option: str) -> str:
    """The stripped text of a file holding one token, for `option`.

    Raises:
        ConfigError: the file cannot be read or is empty.
    """
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{option} {path}: cannot read the {what}: {exc}. Check the path.",
            field=option,
            value=str(path),
        ) from exc
    if not text:
        raise ConfigError(
            f"{option} {path}: the file is empty; it should hold the {what} on one line.",
            field=option,
            value=str(path),
        )
    return text


def warn_insecure() -> None:
    """Say once, as a WARNING log line on stderr, that ``--insecure`` sends plain text."""
    from fedloom.transport.grpc.security import insecure_warning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the log line already says it
        insecure_warning()
