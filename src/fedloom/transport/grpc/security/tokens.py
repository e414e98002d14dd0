"""Client tokens and a shared secret: who may call, compared in constant time."""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from fedloom._tomlcheck import parse_toml, read_config_text
from fedloom.errors import ConfigError

__all__ = ["SHARED", "Tokens", "check_token", "generate_token", "load_tokens"]

SHARED = "*"
"""The owner `Tokens.owner` reports for the shared secret: any client name is allowed."""

_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: valid metadata


@dataclass(frozen=True, kw_only=True, repr=False)
class Tokens:
    """The tokens a server accepts: one per client (`clients`) or one `shared_secret`.

    The repr names the clients but never shows a token.
    """

    clients: Mapping[str, str] = field(default_factory=dict)
    shared_secret: str | None = None

    def __post_init__(self) -> None:
        if bool(self.clients) == (self.shared_secret is not None):
            raise ConfigError(
                "give either per-client tokens or one shared secret, "
                f"got {'both' if self.clients else 'neither'}. Load a tokens file with "
                "load_tokens(path), or pass shared_secret=generate_token().",
                field="tokens",
            )
        if self.shared_secret is not None:
            check_token(self.shared_secret, "the shared secret")
        seen: set[str] = set()
        for name, token in self.clients.items():
            if not isinstance(name, str) or not name or name == SHARED:
                raise ConfigError(
                    f"client name {name!r} is not allowed in tokens; use a non-empty name "
                    f"other than {SHARED!r}.",
                    field="tokens",
                    value=name,
                )
            check_token(token, f"the token of client '{name}'")
            if token in seen:
                raise ConfigError(
                    f"client '{name}' has the same token as another client; each client "
                    "needs its own token so the server knows who calls. Make one with "
                    "generate_token().",
                    field=f"tokens.{name}",
                )
            seen.add(token)
        object.__setattr__(self, "clients", MappingProxyType(dict(self.clients)))

    def __repr__(self) -> str:
        if self.shared_secret is not None:
            return "Tokens(shared_secret=<hidden>)"
        return f"Tokens(clients={sorted(self.clients)!r})"

    def owner(self, token: str) -> str | None:
        """The client `token` belongs to, `SHARED` for the shared secret, or None.

        Compares in constant time against every known token, so timing tells nothing
        about which token came close.
        """
        presented = token.encode("utf-8", "surrogateescape")
        if self.shared_secret is not None:
            return SHARED if hmac.compare_digest(presented, self.shared_secret.encode()) else None
        found: str | None = None
        for name, expected in self.clients.items():
            if hmac.compare_digest(presented, expected.encode()):
                found = name
        return found


def check_token(token: object, what: str) -> None:
    if not isinstance(token, str) or not _TOKEN_CHARS.fullmatch(token):
        shown = type(token).__name__ if not isinstance(token, str) else f"{len(token)} chars"
        raise ConfigError(
            f"{what} must be a non-empty string of printable ASCII without spaces, got "
            f"{shown}. Make one with generate_token().",
            field="tokens",
        )


def generate_token() -> str:
    """A fresh random token: 32 bytes from `secrets`, URL-safe base64 (43 characters).

    It never starts with ``-``, so ``--token TOKEN`` on a command line is not read as a flag.
    """
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def load_tokens(path: str | os.PathLike[str]) -> Tokens:
    """Read per-client tokens from a TOML (``name = "token"``) or JSON (``{"name": "token"}``) file.

    Raises:
        ConfigError: the file is unreadable, does not parse, or is not a name-to-token table.
    """
    file = Path(path)
    example = 'client-1 = "<token>"' if file.suffix == ".toml" else '{"client-1": "<token>"}'
    hint = f"Write one entry per client, e.g. {example}, with tokens from generate_token()."
    if file.suffix not in (".toml", ".json"):
        raise ConfigError(
            f"tokens file {file} must end in .toml or .json, got {file.suffix or 'no suffix'!r}.",
            field="tokens",
            value=str(file),
        )
    try:
        text = read_config_text(file, what="tokens file")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read tokens file {file}: {exc}. Check the path. {hint}",
            field="tokens",
            value=str(file),
        ) from exc
    try:
        if file.suffix == ".toml":
            data: object = parse_toml(text, file, what="tokens file")
        else:
            data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, JSONDecodeError, digits
        raise ConfigError(
            f"tokens file {file} does not parse as {file.suffix[1:].upper()}: {exc}. {hint}",
            field="tokens",
            value=str(file),
        ) from exc
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"tokens file {file} must map client names to tokens, got "
            f"{'an empty table' if data == {} else type(data).__name__}. {hint}",
            field="tokens",
            value=str(file),
        )
    bad = sorted(name for name, token in data.items() if not isinstance(token, str))
    if bad:
        raise ConfigError(
            f"tokens file {file}: the entries {bad} are not strings. {hint}",
            field="tokens",
            value=str(file),
        )
    try:
        return Tokens(clients=data)
    except ConfigError as exc:
        raise ConfigError(f"tokens file {file}: {exc}", field="tokens", value=str(file)) from exc
