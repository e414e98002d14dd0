"""Typed reads from parsed TOML tables, for `fedloom.config`; every error names key and file.

A message starts with the TOML key path and the file (``[run].rounds in
fedloom.toml: ...``), then says what came, what was expected, and how to fix it.
Values are checked, never evaluated.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedloom.errors import ConfigError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "KINDS",
    "MAX_CONFIG_BYTES",
    "MAX_KEY_PARTS",
    "Table",
    "check_kind",
    "check_params",
    "config_error",
    "construct",
    "describe",
    "lookup",
    "parse_toml",
    "read_config_text",
]

MAX_CONFIG_BYTES = 1024**2
"""Largest config, tokens or secret file read (1 MiB): checked before reading it."""

MAX_KEY_PARTS = 32
"""Most parts of one dotted TOML key (``a.b.c`` has 3): tomllib's cost grows with their square."""

_STRINGS = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'')
_DOTS = re.compile(r"[ \t]*\.[ \t]*")
_TOKENS = re.compile(r"[^A-Za-z0-9_.\-\"']+")  # a dotted key, quoted parts too, is one token

KINDS: dict[str, tuple[type, str, str]] = {  # kind -> (type, what it is called, an example)
    "int": (int, "an integer", "10"),
    "float": (float, "a number", "0.5"),
    "str": (str, "a string", '"text"'),
    "bool": (bool, "a boolean", "true"),
}


def read_config_text(
    file: Path, *, what: str = "config file", max_bytes: int = MAX_CONFIG_BYTES
) -> str:
    """The UTF-8 text of `file`, refused before it is read whole when over `max_bytes`.

    Raises:
        ConfigError: the file is larger than `max_bytes`.
        OSError, UnicodeDecodeError: it cannot be read, or is not UTF-8 (callers explain).
    """
    with open(file, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigError(
            f"{file}: the {what} is over {max_bytes} bytes, the most fedloom reads. "
            f"Is it the right file? A {what} is a few kilobytes of text.",
            value=str(file),
        )
    return data.decode("utf-8")


def parse_toml(text: str, file: Path, *, what: str = "config file") -> dict[str, Any]:
    """``tomllib.loads(text)``, refusing first what would take it unbounded time or memory.

    A dotted key of more than `MAX_KEY_PARTS` parts costs tomllib quadratic memory (a
    200 kB line of ``a.a.a...`` takes gigabytes), and deep nesting exhausts the stack.

    Raises:
        ConfigError: such a key, or nesting too deep.
        tomllib.TOMLDecodeError: the text is not TOML (callers explain).
    """
    plain = _DOTS.sub(".", _STRINGS.sub('""', text))
    deepest = max((token.count(".") + 1 for token in _TOKENS.split(plain)), default=0)
    if deepest > MAX_KEY_PARTS:
        raise ConfigError(
            f"{file}: the {what} has a dotted key of {deepest} parts; fedloom reads at most "
            f"{MAX_KEY_PARTS}. Use [section] tables instead of long dotted keys.",
            value=str(file),
        )
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(
            f"{file}: the {what} nests arrays or inline tables too deeply to parse. "
            "Flatten it into [section] tables.",
            value=str(file),
        ) from None


def config_error(key: str, file: Path, message: str, value: object = None) -> ConfigError:
    """A `ConfigError` whose message starts with ``<key> in <file>:``."""
    return ConfigError(f"{key} in {file}: {message}", field=key, value=value)


def describe(value: object) -> str:
    """What a TOML value is, in TOML's words ("a string", "a table", ...)."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {dict: "a table", list: "an array"}
    return names.get(type(value), f"a {type(value).__name__}")


def check_kind(value: object, kind: str, key: str, file: Path) -> Any:
    """`value` if it is of `kind` ("int", "float", "str", "bool"); an int counts as a float.

    Raises:
        ConfigError: a wrong type (a boolean is not an integer).
    """
    expected, name, example = KINDS[kind]
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and (kind == "bool" or not isinstance(value, bool)):
        return value
    raise config_error(
        key,
        file,
        f"expected {name}, got {value!r} ({describe(value)}). "
        f"Write {key.rsplit('.', 1)[-1]} = {_example(value, kind) or example}.",
        value,
    )


def _example(value: object, kind: str) -> str | None:
    """`value` rewritten as `kind` when that is obvious ("20" -> 20, 2.0 -> 2), else None."""
    text = value.strip() if isinstance(value, str) else None
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return str(int(value))
    if kind in ("int", "float") and text is not None:
        try:
            return str(int(text) if kind == "int" else float(text)) + " (no quotes)"
        except ValueError:
            return None
    if kind == "bool" and text in ("true", "false"):
        return f"{text} (no quotes)"
    if kind == "str" and not isinstance(value, dict | list):
        return f'"{value}"'
    return None


class Table:
    """One TOML table, read key by key with type checks.

    Args:
        data: the parsed table (None: the section is absent).
        name: the section's name, e.g. "run".
        file: the config file, for messages.
        keys: the keys the table may hold; None allows any (the caller checks them).
        required: whether an absent section is an error.

    Raises:
        ConfigError: the section is required and absent, or holds a key not in `keys`.
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None,
        name: str,
        file: Path,
        *,
        keys: Sequence[str] | None = None,
        required: bool = False,
    ) -> None:
        if data is None and required:
            raise config_error(
                f"[{name}]",
                file,
                f"the section is missing. Add a [{name}] table "
                "(the format is in fedloom.config's docstring).",
            )
        self.data: dict[str, Any] = dict(data or {})
        self.name = name
        self.file = file
        unknown = [key for key in self.data if keys is not None and key not in keys]
        if keys is not None and unknown:
            raise config_error(
                f"[{name}].{unknown[0]}",
                file,
                f"unknown key '{unknown[0]}'; [{name}] takes: {', '.join(keys)}."
                f"{did_you_mean(unknown[0], keys)} Remove or rename it.",
            )

    def get(
        self,
        key: str,
        kind: str,
        *,
        required: bool = False,
        default: Any = None,
        minimum: int | None = None,
        example: str | None = None,
    ) -> Any:
        """The value of `key`, checked to be of `kind` and at least `minimum`.

        `example` is shown in the message when a required key is missing.
        """
        path = f"[{self.name}].{key}"
        if key not in self.data:
            if required:
                _, name, default_example = KINDS[kind]
                raise config_error(
                    path,
                    self.file,
                    f"required key is missing. Add {name} under [{self.name}], "
                    f"e.g. {key} = {example or default_example}.",
                )
            return default
        value = check_kind(self.data[key], kind, path, self.file)
        if minimum is not None and value < minimum:
            raise config_error(
                path,
                self.file,
                f"must be >= {minimum}, got {value}. Write {key} = {minimum} or more.",
                value,
            )
        return value


def lookup(name: str, options: Mapping[str, Any], what: str, key: str, file: Path) -> Any:
    """``options[name]``, or an error listing the options and the closest one."""
    if name not in options:
        raise config_error(
            key,
            file,
            f"unknown {what} '{name}'; choose one of: "
            f"{', '.join(sorted(options))}.{did_you_mean(name, options)}",
            name,
        )
    return options[name]


def check_params(
    target: Callable[..., Any],
    values: Mapping[str, Any],
    section: str,
    file: Path,
    *,
    skip: Sequence[str] = (),
) -> dict[str, Any]:
    """`values` checked against `target`'s parameters and their plain annotations.

    Names must be parameters of `target` (other than `skip`); a parameter
    annotated ``int``, ``float``, ``str`` or ``bool`` must get that type; every
    parameter without a default must be given.
    """
    parameters = {
        name: parameter
        for name, parameter in inspect.signature(target).parameters.items()
        if name not in skip and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in parameters:
            raise config_error(
                f"{section}.{key}",
                file,
                f"{getattr(target, '__name__', section)} has no parameter '{key}'; its "
                f"parameters are: {', '.join(parameters) or 'none'}."
                f"{did_you_mean(key, parameters)}",
                value,
            )
        annotation = parameters[key].annotation
        kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        checked[key] = check_kind(value, kind, f"{section}.{key}", file) if kind in KINDS else value
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and name not in checked:
            raise config_error(
                f"{section}.{name}",
                file,
                f"required parameter is missing. Add {name} = ... under {section}.",
            )
    return checked


def construct(
    target: Callable[..., Any], values: dict[str, Any], section: str, file: Path, **extra: Any
) -> Any:
    """``target(**values, **extra)``; a `ConfigError` it raises is re-raised under the TOML key.

    The key is the parameter the error names (its ``field``), else the one
    parameter whose value it reports, else the section.
    """
    try:
        return target(**values, **extra)
    except (ConfigError, TypeError, ValueError) as exc:
        field = getattr(exc, "field", None)
        reported = getattr(exc, "value", None)
        matches = [key for key in values if key == field] or [
            key
            for key, value in values.items()
            if isinstance(exc, ConfigError) and type(value) is type(reported) and value == reported
        ]
        key = f"{section}.{matches[0]}" if len(matches) == 1 else section
        raise config_error(key, file, str(exc), reported) from exc
