"""Per-client quotas the server enforces: bytes uploaded and joins, over a sliding window.

`Quotas` is the configuration; `QuotaLedger` counts what each client (and each
peer host) used in the last ``window_s`` seconds and raises `QuotaExceeded`, with
how long to wait, before the server reads or allocates anything for a request
over its quota. It holds no grpc objects, so it is tested without a network.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedloom.errors import ConfigError, QuotaExceeded

__all__ = ["DEFAULT_QUOTAS", "QuotaLedger", "Quotas"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Quotas:
    """How much one client may send the server, per sliding window of `window_s` seconds.

    Attributes:
        window_s: the length of the window every quota counts over.
        upload_bytes: most payload bytes (weights and plug-in tensors, as declared in a
            result's header) one client may upload per window; None: no quota (the
            per-result `Limits.max_message_bytes` still holds).
        joins_per_client: most joins under one client name per window; a client that
            rejoins in a loop is refused with RESOURCE_EXHAUSTED until the window moves.
        joins_per_host: most joins from one peer host (IP address) per window, whatever
            the names; None: no limit (clients behind one NAT share a host).
    """

    window_s: float = 60.0
    upload_bytes: int | None = None
    joins_per_client: int | None = 30
    joins_per_host: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.window_s, bool) or not (
            isinstance(self.window_s, int | float) and 0 < self.window_s < math.inf
        ):
            raise ConfigError(
                f"Quotas.window_s must be a positive number of seconds, got {self.window_s!r}.",
                field="window_s",
                value=self.window_s,
            )
        for name in ("upload_bytes", "joins_per_client", "joins_per_host"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(
                    f"Quotas.{name} must be a positive int or None (no quota), got {value!r}.",
                    field=name,
                    value=value,
                )
            if value is not None and value < 1:
                raise ConfigError(
                    f"Quotas.{name} must be at least 1, got {value}. Pass None for no quota.",
                    field=name,
                    value=value,
                )


DEFAULT_QUOTAS = Quotas()
"""30 joins per client name per minute; no upload or per-host quota."""


class _Window:
    """Amounts used by each key in the last `window_s` seconds."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._events: dict[str, collections.deque[tuple[float, int]]] = {}
        self._used: dict[str, int] = {}
        self._prune_at = 1024

    def charge(self, key: str, amount: int, limit: int, now: float) -> float | None:
        """Record `amount` for `key` and return None, or the wait until it fits under `limit`."""
        events = self._events.setdefault(key, collections.deque())
        used = self._expire(key, events, now)
        if used + amount > limit:
            if amount > limit:  # more than the whole quota: waiting does not help
                return math.inf
            freed, wait = used, 0.0
            for stamp, value in events:  # the oldest events leave the window first
                freed -= value
                wait = stamp + self._window_s - now
                if freed + amount <= limit:
                    break
            return max(wait, 0.0)
        events.append((now, amount))
        self._used[key] = used + amount
        if len(self._events) > self._prune_at:  # forget keys with nothing in the window
            for other in list(self._events):
                if not self._expire(other, self._events[other], now):
                    del self._events[other], self._used[other]
            self._prune_at = max(1024, 2 * len(self._events))
        return None

    def _expire(self, key: str, events: collections.deque[tuple[float, int]], now: float) -> int:
        used = self._used.get(key, 0)
        while events and events[0][0] <= now - self._window_s:
            used -= events.popleft()[1]
        self._used[key] = used
        return used


class QuotaLedger:
    """Counts each client's uploads and joins against `Quotas`; thread-safe.

    Args:
        quotas: the limits.
        clock: time source in seconds (injectable for tests).
    """

    def __init__(
        self, quotas: Quotas = DEFAULT_QUOTAS, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.quotas = quotas
        self._clock = clock
        self._lock = threading.Lock()
        self._uploads = _Window(quotas.window_s)
        self._joins = _Window(quotas.window_s)
        self._hosts = _Window(quotas.window_s)

    def charge_join(self, name: str, host: str) -> None:
        """Count a join of `name` from `host`.

        Raises:
            QuotaExceeded: `name` or `host` joined too often in the window (nothing is counted).
        """
        quotas = self.quotas
        with self._lock:
            now = self._clock()
            if quotas.joins_per_host is not None:
                wait = self._hosts.charge(host, 1, quotas.joins_per_host, now)
                if wait is not None:
                    raise self._exceeded(
                        f"host {host} joined {quotas.joins_per_host} times in the last "
                        f"{quotas.window_s:g} s, the most Quotas.joins_per_host allows",
                        name,
                        wait,
                    )
            if quotas.joins_per_client is not None:
                wait = self._joins.charge(name, 1, quotas.joins_per_client, now)
                if wait is not None:
                    raise self._exceeded(
                        f"client '{name}' joined {quotas.joins_per_client} times in the last "
                        f"{quotas.window_s:g} s, the most Quotas.joins_per_client allows",
                        name,
                        wait,
                    )

    def charge_upload(self, name: str, nbytes: int) -> None:
        """Count `nbytes` uploaded by `name`, before the server reads or allocates them.

        Raises:
            QuotaExceeded: the upload would take `name` over ``Quotas.upload_bytes``.
        """
        limit = self.quotas.upload_bytes
        if limit is None:
            return
        with self._lock:
            wait = self._uploads.charge(name, nbytes, limit, self._clock())
        if wait is not None:
            raise self._exceeded(
                f"client '{name}' declared {nbytes} bytes, which would take it over its "
                f"upload quota of {limit} bytes per {self.quotas.window_s:g} s "
                "(Quotas.upload_bytes)",
                name,
                wait,
            )

    def _exceeded(self, problem: str, name: str, wait: float) -> QuotaExceeded:
        if math.isinf(wait):
            advice = "The request is larger than the whole quota: raise the quota on the server."
            retry: float | None = None
        else:
            advice = f"Retry in {wait:.1f} s, or raise the quota on the server."
            retry = wait
        return QuotaExceeded(f"{problem}. {advice}", client_id=name, retry_after_s=retry)
