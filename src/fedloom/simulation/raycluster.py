"""The Ray engine: virtual clients' tasks on a Ray cluster, or a local Ray instance.

Ray is optional (``pip install 'fedloom[ray]'``). Each Ray worker is an actor
that imports ``client_fn`` by name once and then runs jobs; a batch's global
weights and plug-in tensors are put in Ray's object store once and every job
points into them; jobs and replies are the same bytes as the process engine's
(`fedloom.simulation._jobs`), so a task's result does not depend on the engine
or the node. On a cluster, fedloom and the module that defines ``client_fn``
must be importable on every node.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from fedloom.core import Failure, Reply
from fedloom.core.dispatch import ClientState
from fedloom.errors import ConfigError
from fedloom.simulation._jobs import (
    WorkerSetup,
    decode_reply,
    encode_job,
    function_reference,
    run_encoded,
    share,
)
from fedloom.transport.inprocess import ClientFn, Job

__all__ = ["RayExecutor"]

logger = logging.getLogger(__name__)

_WAIT_S = 600.0  # the longest a job may run before the engine gives up on the cluster


class RayWorker:
    """A Ray actor's state: the imported client_fn and the worker's caches."""

    def __init__(self, reference: list[str], sys_path: list[str]) -> None:
        self._setup = WorkerSetup(reference, sys_path)
        if "torch" in sys.modules:  # one actor per CPU: one thread each
            sys.modules["torch"].set_num_threads(1)

    def run(self, message: bytes, shared: Any) -> bytes:
        """Run one encoded job; `shared` is the batch's buffer from the object store."""
        return run_encoded(self._setup, message, np.asarray(shared).data)


class RayExecutor:
    """Runs jobs on Ray actors, one per CPU, started when the first batch comes.

    Args:
        client_fn: builds a client; must be importable by name (a module-level function).
        address: the cluster to join (e.g. "auto" or "ray://head:10001"); None starts
            a local Ray instance, which `close` shuts down.
        num_cpus: CPUs of the local instance (default: all), and so how many actors.

    Raises:
        ImportError: Ray is not installed (the ``ray`` extra).
        ConfigError: `client_fn` cannot be imported by name.
    """

    def __init__(
        self, client_fn: ClientFn, *, address: str | None = None, num_cpus: int | None = None
    ) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError(
                "engine='ray' needs Ray, which is not installed. Install the extra: "
                "pip install 'fedloom[ray]'."
            ) from exc
        if num_cpus is not None and (
            isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1
        ):
            raise ConfigError(
                f"workers must be an int >= 1, got {num_cpus!r}.", field="workers", value=num_cpus
            )
        self._ray: Any = ray
        self._reference = function_reference(client_fn, engine="ray")
        self._address = address
        self._num_cpus = num_cpus
        self._owns_instance = False
        self._actors: list[Any] = []
        self._actor_class: Any = None

    def execute(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply, ClientState]]:
        if not jobs:
            return
        ray = self._ray
        self._start()
        shared = share(jobs)
        buffer = ray.put(np.frombuffer(shared.buffer, dtype=np.uint8))
        places = shared.places
        del shared
        pending = list(range(len(jobs)))
        pending.reverse()
        running: dict[Any, tuple[int, int]] = {}  # ref -> (actor position, job index)
        idle = list(range(len(self._actors)))
        while pending or running:
            while pending and idle:
                position, index = idle.pop(), pending.pop()
                message = encode_job(jobs[index], places[index], index)
                running[self._actors[position].run.remote(message, buffer)] = (position, index)
            done, _ = ray.wait(list(running), num_returns=1, timeout=_WAIT_S)
            if not done:
                raise TimeoutError(
                    f"no Ray worker finished a task in {_WAIT_S:.0f} s; is the cluster alive?"
                )
            for ref in done:
                position, index = running.pop(ref)
                idle.append(position)
                try:
                    message = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the actor died: replace it
                    reason = (
                        f"the Ray worker running client '{jobs[index].client_id}' failed: "
                        f"{type(exc).__name__}; a fresh worker takes its place"
                    )
                    logger.warning(reason)
                    self._actors[position] = self._new_actor()
                    yield (
                        index,
                        Failure(client_id=jobs[index].client_id, reason=reason),
                        jobs[index].state,
                    )
                    continue
                yield decode_reply(message, jobs)

    def close(self) -> None:
        """Stop the actors, and the local Ray instance if this executor started it."""
        ray = self._ray
        for actor in self._actors:
            ray.kill(actor)
        self._actors.clear()
        if self._owns_instance and ray.is_initialized():
            ray.shutdown()
        self._owns_instance = False

    def _start(self) -> None:
        if self._actors:
            return
        ray = self._ray
        if not ray.is_initialized():
            if self._address is None:
                ray.init(
                    num_cpus=self._num_cpus or os.cpu_count() or 1,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
            else:
                ray.init(address=self._address, logging_level=logging.WARNING)
            self._owns_instance = True
        count = max(1, int(ray.available_resources().get("CPU", 1)))
        if self._num_cpus is not None:
            count = min(count, self._num_cpus)
        self._actor_class = ray.remote(num_cpus=1)(RayWorker)
        self._actors = [self._new_actor() for _ in range(count)]

    def _new_actor(self) -> Any:
        return self._actor_class.remote(self._reference, list(sys.path))
