"""`fedloom.yaml`: which commands a compute package runs for each entry point.

A manifest names the entry points as command lines with placeholders that the
client fills in for every task::

    train: python entrypoint.py train {in} {out}
    validate: python entrypoint.py validate {in} {out_json}
    startup: python entrypoint.py prepare          # optional, run once after unpacking
    init: python entrypoint.py init_seed {out}     # optional, initial weights on request

FEDn's shape (``entry_points: {train: {command: ...}}``) is accepted too. The
YAML is read with ``yaml.safe_load``: tags that would build Python objects are
refused, and nothing in a manifest is executed except the named commands, as
argument lists (never through a shell).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from fedloom.errors import PackageError, did_you_mean

__all__ = ["MANIFEST_NAME", "ENTRY_POINTS", "Manifest", "parse_manifest"]

MANIFEST_NAME = "fedloom.yaml"
"""The manifest's file name at the root of a package."""

MAX_MANIFEST_BYTES = 64 * 1024

ENTRY_POINTS: Mapping[str, frozenset[str]] = {
    "train": frozenset({"in", "out", "data"}),
    "validate": frozenset({"in", "out_json", "data"}),
    "startup": frozenset({"data"}),
    "init": frozenset({"out", "data"}),
}
"""Each entry point and the placeholders its command may use."""

_REQUIRED = {"train": ("in", "out"), "validate": ("in", "out_json"), "init": ("out",)}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Manifest:
    """The entry points of a package, each as an argument list with placeholders."""

    train: tuple[str, ...]
    validate: tuple[str, ...] | None = None
    startup: tuple[str, ...] | None = None
    init: tuple[str, ...] | None = None

    def command(self, entry_point: str) -> tuple[str, ...] | None:
        """The argument list of `entry_point`, or None when the package has none."""
        value: tuple[str, ...] | None = getattr(self, entry_point)
        return value


def parse_manifest(data: bytes, *, source: str = MANIFEST_NAME) -> Manifest:
    """Read and check a manifest.

    Raises:
        PackageError: the YAML is invalid or unsafe, an entry point is unknown or
            missing, or a command uses a placeholder its entry point does not have.

    Example:
        >>> parse_manifest(b"train: python entrypoint.py train {in} {out}").train
        ('python', 'entrypoint.py', 'train', '{in}', '{out}')
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise PackageError(
            f"{source} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit for a "
            "manifest. A manifest only names the entry points' commands."
        )
    try:
        document = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PackageError(
            f"{source} is not valid YAML ({type(exc).__name__}: {exc}). Write plain "
            "`train: python entrypoint.py train {in} {out}` lines; Python tags are refused."
        ) from None
    if not isinstance(document, dict):
        raise PackageError(
            f"{source} must be a mapping of entry points to commands, got "
            f"{type(document).__name__}."
        )
    if set(document) == {"entry_points"} and isinstance(document["entry_points"], dict):
        document = document["entry_points"]  # FEDn's layout
    commands: dict[str, tuple[str, ...]] = {}
    for name, value in document.items():
        if name not in ENTRY_POINTS:
            raise PackageError(
                f"{source} names an unknown entry point {name!r}; expected "
                f"{', '.join(ENTRY_POINTS)}.{did_you_mean(str(name), ENTRY_POINTS)}"
            )
        if isinstance(value, dict) and set(value) == {"command"}:
            value = value["command"]  # FEDn's layout
        commands[name] = _parse_command(name, value, source)
    if "train" not in commands:
        raise PackageError(
            f"{source} has no 'train' entry point. Add e.g. "
            "`train: python entrypoint.py train {in} {out}`."
        )
    return Manifest(**commands)


def _parse_command(name: str, value: object, source: str) -> tuple[str, ...]:
    if not isinstance(value, str) or not value.strip():
        raise PackageError(
            f"{source}: entry point {name!r} must be a command line (a string), got {value!r}."
        )
    try:
        argv = tuple(shlex.split(value))
    except ValueError as exc:
        raise PackageError(
            f"{source}: entry point {name!r}: cannot split {value!r}: {exc}."
        ) from None
    allowed = ENTRY_POINTS[name]
    used: set[str] = set()
    for argument in argv:
        for placeholder in _PLACEHOLDER.findall(argument):
            if placeholder not in allowed:
                raise PackageError(
                    f"{source}: entry point {name!r} uses the placeholder {{{placeholder}}}; "
                    f"it may use {', '.join('{' + p + '}' for p in sorted(allowed))}."
                )
            used.add(placeholder)
    missing = [p for p in _REQUIRED.get(name, ()) if p not in used]
    if missing:
        raise PackageError(
            f"{source}: entry point {name!r} must pass "
            f"{' and '.join('{' + p + '}' for p in missing)} to its command (the files the "
            f"client hands over and reads back), got {value!r}."
        )
    return argv
