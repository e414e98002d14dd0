"""Hooks on the client's cycle: registration, order, stopping, and broken hooks."""

from __future__ import annotations

import logging

import pytest

from fedloom.core.hooks import STEPS, ClientHooks, CycleEvent, StopAtVersion, StopClient, fire
from fedloom.errors import ConfigError


def event(step: str, server_round: int | None = None) -> CycleEvent:
    return CycleEvent(step=step, client="c1", task="fit", server_round=server_round)


def test_decorators_register_per_step_and_run_in_order():
    hooks = ClientHooks()
    seen: list[tuple[str, str]] = []
    for step in STEPS:
        getattr(hooks, step)(lambda e, tag="first": seen.append((e.step, tag)))
    hooks.add("after_upload", lambda e: seen.append((e.step, "second")))
    for step in STEPS:
        fire([hooks], event(step))
    assert seen == [
        *((step, "first") for step in STEPS[:3]),
        ("after_upload", "first"),
        ("after_upload", "second"),
        *((step, "first") for step in STEPS[4:]),
    ]


def test_objects_with_step_methods_are_hooks_too():
    class Counter:
        def __init__(self) -> None:
            self.downloads = 0

        def after_download(self, e: CycleEvent) -> None:
            self.downloads += 1

    counter = Counter()
    for step in STEPS:
        fire([counter], event(step))
    assert counter.downloads == 1


def test_stop_at_version_stops_after_the_upload_of_that_round():
    stop = StopAtVersion(3)
    fire([stop], event("after_upload", 2))
    fire([stop], event("after_upload", None))  # get_weights has no round
    fire([stop], event("after_download", 5))  # only uploads count
    with pytest.raises(StopClient, match="version 3"):
        fire([stop], event("after_upload", 3))
    with pytest.raises(ConfigError, match="round >= 1"):
        StopAtVersion(0)


def test_a_stop_lets_the_other_hooks_of_the_step_run():
    ran = []
    hooks = ClientHooks()
    hooks.after_upload(lambda e: ran.append("after"))
    with pytest.raises(StopClient):
        fire([StopAtVersion(1), hooks], event("after_upload", 1))
    assert ran == ["after"]


def test_a_broken_hook_is_logged_and_the_cycle_goes_on(caplog):
    hooks = ClientHooks()
    ran = []

    @hooks.before_upload
    def broken(e: CycleEvent) -> None:
        raise RuntimeError("bug in a hook")

    hooks.before_upload(lambda e: ran.append(e.step))
    with caplog.at_level(logging.WARNING, logger="fedloom.core.hooks"):
        fire([hooks], event("before_upload"))
    assert ran == ["before_upload"]  # the next function still ran
    assert "broken raised at before_upload" in caplog.text


def test_unknown_step_and_non_callable():
    hooks = ClientHooks()
    with pytest.raises(ConfigError, match="Did you mean 'after_upload'"):
        hooks.add("after_uplod", lambda e: None)
    with pytest.raises(ConfigError, match="callable"):
        hooks.add("at_end", 3)  # type: ignore[arg-type]
