"""What a script started by ``fedloom launch`` learns about its place in the launched run.

``fedloom launch --nproc N SCRIPT.py`` starts N copies of the script: rank 0 is
the server, ranks 1..N-1 are clients. Each copy reads its rank, the world size,
the server's address and a shared secret with `launch_env`, then calls
`fedloom.serve` or `fedloom.connect`. Launched runs are on loopback in plain text
(``--insecure`` semantics), with the shared secret as the only check.

Example:
    >>> env = launch_env({"FEDLOOM_RANK": "1", "FEDLOOM_WORLD_SIZE": "3",
    ...                   "FEDLOOM_ADDRESS": "127.0.0.1:5000", "FEDLOOM_TOKEN": "s3cret"})
    >>> env.rank, env.is_server, env.num_clients
    (1, False, 2)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from fedloom.errors import ConfigError

__all__ = [
    "ADDRESS_VAR",
    "RANK_VAR",
    "TOKEN_VAR",
    "WORLD_SIZE_VAR",
    "LaunchEnv",
    "launch_env",
]

RANK_VAR = "FEDLOOM_RANK"
WORLD_SIZE_VAR = "FEDLOOM_WORLD_SIZE"
ADDRESS_VAR = "FEDLOOM_ADDRESS"
TOKEN_VAR = "FEDLOOM_TOKEN"


@dataclass(frozen=True, kw_only=True, repr=False)
class LaunchEnv:
    """One launched process's place: rank 0 serves, ranks 1..world_size-1 are clients.

    The repr hides the token.
    """

    rank: int
    world_size: int
    address: str
    token: str

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(
                f"{RANK_VAR}={self.rank} must be in 0..{self.world_size - 1} "
                f"({WORLD_SIZE_VAR}={self.world_size}). Start the script with `fedloom launch`.",
                field=RANK_VAR,
                value=self.rank,
            )

    @property
    def is_server(self) -> bool:
        """Whether this process is rank 0, the server."""
        return self.rank == 0

    @property
    def num_clients(self) -> int:
        """How many client processes there are: ``world_size - 1``."""
        return self.world_size - 1

    def __repr__(self) -> str:
        return (
            f"LaunchEnv(rank={self.rank}, world_size={self.world_size}, "
            f"address={self.address!r}, token=<hidden>)"
        )


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """This process's `LaunchEnv`, read from the variables ``fedloom launch`` sets.

    Args:
        environ: where to read them (default: ``os.environ``).

    Raises:
        ConfigError: a variable is missing or malformed; it says to start the
            script with ``fedloom launch``.
    """
    source = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for name in (RANK_VAR, WORLD_SIZE_VAR, ADDRESS_VAR, TOKEN_VAR):
        value = source.get(name)
        if not value:
            raise ConfigError(
                f"environment variable {name} is not set, so this script was not started by "
                "the launcher. Start it with `fedloom launch --nproc N SCRIPT.py`.",
                field=name,
            )
        values[name] = value
    return LaunchEnv(
        rank=_integer(values, RANK_VAR, minimum=0),
        world_size=_integer(values, WORLD_SIZE_VAR, minimum=2),
        address=values[ADDRESS_VAR],
        token=values[TOKEN_VAR],
    )


def _integer(values: Mapping[str, str], name: str, *, minimum: int) -> int:
    text = values[name]
    try:
        number = int(text)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigError(
            f"environment variable {name}={text!r} must be a whole number >= {minimum}. "
            "Start the script with `fedloom launch --nproc N SCRIPT.py` (N >= 2).",
            field=name,
            value=text,
        )
    return number
