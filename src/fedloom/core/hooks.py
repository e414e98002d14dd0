"""Hooks on a client's cycle (OpenFed's step functions): download, upload, failure, end.

A deployed client repeats: download a task, run it, upload the result. Hooks
run at each step with a `CycleEvent`; a hook raises `StopClient` to end the
client's cycle cleanly after the current step (`StopAtVersion` does that once
a round is done). Register hooks as objects with methods named after the
steps, or with `ClientHooks`' decorators::

    hooks = ClientHooks()

    @hooks.after_upload
    def log(event):
        print(event.client, "sent round", event.server_round)

    connect(client, address=..., name="c1", hooks=[hooks, StopAtVersion(10)])

A hook that raises anything else is logged and the cycle goes on: a broken
hook does not take the client down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fedloom.errors import ConfigError, FedloomError, did_you_mean

__all__ = ["STEPS", "ClientHooks", "CycleEvent", "StopAtVersion", "StopClient", "fire"]

logger = logging.getLogger(__name__)

STEPS = (
    "before_download",
    "after_download",
    "before_upload",
    "after_upload",
    "on_failure",
    "at_end",
)
"""The steps of a client's cycle that hooks can run at, in the order they happen."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CycleEvent:
    """Where a client is in its cycle.

    Attributes:
        step: one of `STEPS`.
        client: the client's name.
        task: "fit", "evaluate" or "get_weights"; None at "at_end".
        server_round: the round of the task (its ``config["server_round"]``), when it has one.
        tasks_done: results uploaded so far.
        reason: why the task failed, at "on_failure"; why the cycle ended, at "at_end".
    """

    step: str
    client: str
    task: str | None = None
    server_round: int | None = None
    tasks_done: int = 0
    reason: str | None = None


class StopClient(FedloomError):
    """Raised by a hook to end the client's cycle after the current step; the client leaves."""


Hook = Callable[[CycleEvent], None]


class ClientHooks:
    """Functions registered per step, with a decorator for each step.

    Example:
        >>> hooks = ClientHooks()
        >>> @hooks.on_failure
        ... def report(event):
        ...     print(f"{event.client}: {event.reason}")
        >>> fire([hooks], CycleEvent(step="on_failure", client="c1", reason="disk full"))
        c1: disk full
    """

    def __init__(self) -> None:
        self._hooks: dict[str, list[Hook]] = {step: [] for step in STEPS}

    def add(self, step: str, hook: Hook) -> Hook:
        """Run `hook` at `step`; returns it, so this works as a decorator."""
        if step not in self._hooks:
            raise ConfigError(
                f"unknown step {step!r}; hooks run at {', '.join(STEPS)}."
                f"{did_you_mean(step, STEPS)}",
                field="step",
            )
        if not callable(hook):
            raise ConfigError(f"a hook must be callable, got {type(hook).__name__}.")
        self._hooks[step].append(hook)
        return hook

    def before_download(self, hook: Hook) -> Hook:
        """Decorator: run before a task's payload is received."""
        return self.add("before_download", hook)

    def after_download(self, hook: Hook) -> Hook:
        """Decorator: run once a task is received, before it runs."""
        return self.add("after_download", hook)

    def before_upload(self, hook: Hook) -> Hook:
        """Decorator: run before a result is sent."""
        return self.add("before_upload", hook)

    def after_upload(self, hook: Hook) -> Hook:
        """Decorator: run once a result is sent."""
        return self.add("after_upload", hook)

    def on_failure(self, hook: Hook) -> Hook:
        """Decorator: run when a task failed (its failure is still uploaded)."""
        return self.add("on_failure", hook)

    def at_end(self, hook: Hook) -> Hook:
        """Decorator: run once when the client's cycle ends, for whatever reason."""
        return self.add("at_end", hook)

    def functions(self, step: str) -> tuple[Hook, ...]:
        """The functions registered for `step`, in order."""
        return tuple(self._hooks.get(step, ()))


@dataclass(frozen=True, slots=True)
class StopAtVersion:
    """End the client's cycle once it has uploaded its result for round `version` or later.

    OpenFed's StopAtVersion: the model version is the server round.
    """

    version: int

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ConfigError(
                f"StopAtVersion needs a round >= 1, got {self.version!r}.", field="version"
            )

    def after_upload(self, event: CycleEvent) -> None:
        """Stop once the uploaded task's round reached `version`."""
        if event.server_round is not None and event.server_round >= self.version:
            raise StopClient(f"reached version {self.version} (round {event.server_round})")


def fire(hooks: Iterable[object], event: CycleEvent) -> None:
    """Run every hook for `event.step`, in order.

    A hook is a `ClientHooks` or any object with a method named after the step.

    Raises:
        StopClient: a hook asked to end the cycle (the other hooks of this step still run).
    """
    stop: StopClient | None = None
    for hook in hooks:
        if isinstance(hook, ClientHooks):
            functions = hook.functions(event.step)
        else:
            method = getattr(hook, event.step, None)
            functions = (method,) if method is not None else ()
        for function in functions:
            try:
                function(event)
            except StopClient as exc:
                stop = stop or exc
            except Exception:  # a user's hook must not take the client down
                logger.warning(
                    "hook %s raised at %s; the client goes on",
                    getattr(function, "__qualname__", type(hook).__name__),
                    event.step,
                    exc_info=True,
                )
    if stop is not None:
        raise stop
