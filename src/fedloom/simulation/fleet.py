"""A simulated fleet: how fast each virtual client is and when it is online.

Real fleets are heterogeneous: some devices take ten times longer than
others, and some are unreachable in a given round. `Fleet` draws both from
the run seed, per client, on demand (nothing is allocated for the clients a
round does not touch), and the in-process channel applies them on its virtual
clock exactly as a deployment meets them: an offline client's task fails, a
task slower than the round's deadline (``fit_timeout_s``) is dropped as a
missed deadline, and in asynchronous schedules (FedBuff) slow clients arrive
later and staler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from fedloom.core import ClientId, generator
from fedloom.errors import ConfigError

__all__ = ["Fleet"]


@dataclass(frozen=True, kw_only=True)
class Fleet:
    """Per-client speed and availability, drawn from the run seed.

    A client's virtual seconds per task are ``task_s * exp(spread * z)`` with
    ``z ~ N(0, 1)`` drawn once per client (a log-normal spread of speeds: with
    ``spread=1`` the slowest tenth take over 3.6 times the median). In each
    round a client is online with probability `availability`, drawn per
    client and round. `profile`, when given, replaces both draws for the
    clients it knows: ``profile(client_id) -> (task_s, availability)``.

    Args:
        task_s: the median virtual seconds a task takes (> 0).
        spread: the log-normal spread of speeds across clients (0: all equal).
        availability: the probability that a client is online in a round, in (0, 1].
        seed: the seed of the draws (the run seed is a good choice).
        profile: an explicit per-client ``(task_s, availability)``, or None.

    Example:
        >>> fleet = Fleet(task_s=2.0, availability=1.0)
        >>> fleet.task_seconds("7"), fleet.online("7", server_round=1)
        (2.0, True)
    """

    task_s: float = 1.0
    spread: float = 0.0
    availability: float = 1.0
    seed: int = 0
    profile: Callable[[ClientId], tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.task_s) or not self.task_s > 0:
            raise ConfigError(
                f"Fleet task_s must be a finite number > 0, got {self.task_s!r}. It is the "
                "median virtual seconds a client takes per task (e.g. 1.0).",
                field="task_s",
                value=self.task_s,
            )
        if not _is_number(self.spread) or self.spread < 0:
            raise ConfigError(
                f"Fleet spread must be a finite number >= 0, got {self.spread!r}. Use 0 for "
                "equally fast clients, about 1 for a realistic spread of device speeds.",
                field="spread",
                value=self.spread,
            )
        if not _is_number(self.availability) or not 0 < self.availability <= 1:
            raise ConfigError(
                f"Fleet availability must be in (0, 1], got {self.availability!r}. It is the "
                "probability that a client is online in a round (1: always).",
                field="availability",
                value=self.availability,
            )

    def task_seconds(self, client_id: ClientId) -> float:
        """Virtual seconds `client_id` takes per task (the same in every round)."""
        if self.profile is not None:
            return _checked_profile(self.profile, client_id)[0]
        if self.spread == 0:
            return float(self.task_s)
        z = generator(self.seed, "fleet", "speed", client_id).standard_normal()
        return float(self.task_s * math.exp(self.spread * z))

    def online(self, client_id: ClientId, server_round: int) -> bool:
        """Whether `client_id` is reachable in `server_round`."""
        availability = (
            self.availability
            if self.profile is None
            else _checked_profile(self.profile, client_id)[1]
        )
        if availability >= 1:
            return True
        draw = generator(self.seed, "fleet", "online", client_id, server_round).random()
        return bool(draw < availability)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _checked_profile(
    profile: Callable[[ClientId], tuple[float, float]], client_id: ClientId
) -> tuple[float, float]:
    task_s, availability = profile(client_id)
    if not _is_number(task_s) or not task_s > 0 or not _is_number(availability):
        raise ConfigError(
            f"Fleet profile({client_id!r}) returned ({task_s!r}, {availability!r}); expected "
            "(task_s > 0, availability in (0, 1]).",
            field="profile",
            value=client_id,
        )
    return float(task_s), float(availability)
