"""The process-pool engine: virtual clients' tasks on every core of this machine.

Each worker is started once (``spawn``, so no thread or lock of this process
is inherited) and imports ``client_fn`` by name once, so whatever the user's
module loads and caches (the dataset, a model to reuse) is loaded once per
worker, not once per task. A batch's global weights and plug-in tensors are
written once to a read-only file that every worker maps into memory; a job is
a small message pointing into it, plus the client's state; a reply is a JSON
header and the result's flat arrays. No Python object crosses a pipe: messages
are bytes. A task's seed comes with its config (derived from the
run seed, round and client id), so its result does not depend on which
worker ran it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

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

__all__ = ["ProcessExecutor"]

logger = logging.getLogger(__name__)

_POLL_S = 1.0  # how often a wait for replies checks that the workers are alive
_STOP_S = 10.0  # how long a worker may take to exit before it is terminated


class ProcessExecutor:
    """Runs jobs on a pool of worker processes, one job per idle worker at a time.

    Args:
        client_fn: builds a client; must be importable by name (a module-level function).
        workers: how many processes (default: one per core this process may use).

    Raises:
        ConfigError: `client_fn` cannot be imported by name, or `workers` < 1.
    """

    def __init__(self, client_fn: ClientFn, *, workers: int | None = None) -> None:
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise ConfigError(
                f"workers must be an int >= 1, got {workers!r}. Leave it out for one "
                "process per core.",
                field="workers",
                value=workers,
            )
        self._reference = function_reference(client_fn, engine="process")
        self._count = workers if workers is not None else _usable_cores()
        self._workers: list[_Worker] = []
        self._folder = Path(tempfile.mkdtemp(prefix="fedloom-pool-", dir=_shared_memory_dir()))
        self._batches = 0
        self._finalizer = weakref.finalize(self, _stop_all, self._workers, self._folder)

    @property
    def workers(self) -> int:
        """How many worker processes the pool runs."""
        return self._count

    def execute(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply, ClientState]]:
        if not jobs:
            return
        self._start()
        shared = share(jobs)
        places = shared.places
        self._batches += 1
        path = self._folder / f"batch-{self._batches}.bin"
        path.write_bytes(shared.buffer)
        del shared  # the workers read the file; keep no second copy here
        pending = deque(range(len(jobs)))
        busy: dict[int, int] = {}  # worker position -> job index
        try:
            while pending or busy:
                for position, worker in enumerate(self._workers):
                    if pending and position not in busy:
                        index = pending.popleft()
                        worker.send(str(path), encode_job(jobs[index], places[index], index))
                        busy[position] = index
                ready = wait([self._workers[p].connection for p in busy], timeout=_POLL_S)
                for position in list(busy):
                    worker = self._workers[position]
                    if worker.connection in ready:
                        try:
                            message = worker.connection.recv_bytes()
                        except (EOFError, OSError):
                            message = None
                        if message is not None:
                            del busy[position]
                            yield decode_reply(message, jobs)
                            continue
                    if not worker.process.is_alive() or worker.connection in ready:
                        index = busy.pop(position)
                        failure = self._lost(worker, jobs[index])
                        self._workers[position] = _Worker.start(self._reference)
                        yield index, failure, jobs[index].state
        finally:
            self._drain(busy)
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the workers and remove the shared files."""
        self._finalizer()

    def _start(self) -> None:
        while len(self._workers) < self._count:
            self._workers.append(_Worker.start(self._reference))

    def _lost(self, worker: _Worker, job: Job) -> Failure:
        worker.process.join(_STOP_S)  # its pipe closed: it is exiting, or gone
        code = worker.process.exitcode
        worker.stop()
        reason = (
            f"the worker process running client '{job.client_id}' died (exit code {code}); "
            "a fresh worker takes its place. A client that exhausts memory or crashes the "
            "interpreter fails only its own task."
        )
        logger.warning(reason)
        return Failure(client_id=job.client_id, reason=reason)

    def _drain(self, busy: dict[int, int]) -> None:
        """Wait out the jobs still running (when the consumer stopped early): they are dropped."""
        for position in list(busy):
            worker = self._workers[position]
            if worker.connection.poll(_STOP_S):
                with contextlib.suppress(EOFError, OSError):
                    worker.connection.recv_bytes()
                    continue
            worker.stop()
            self._workers[position] = _Worker.start(self._reference)


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, process: BaseProcess, connection: Connection) -> None:
        self.process = process
        self.connection = connection

    @classmethod
    def start(cls, reference: list[str]) -> _Worker:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=True)
        process = context.Process(
            target=_serve,
            args=(child, reference, list(sys.path)),
            name="fedloom-worker",
            daemon=True,
        )
        process.start()
        child.close()
        return cls(process, parent)

    def send(self, path: str, message: bytes) -> None:
        self.connection.send_bytes(path.encode())
        self.connection.send_bytes(message)

    def ask_to_stop(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send_bytes(b"")

    def stop(self) -> None:
        self.ask_to_stop()
        self.process.join(_STOP_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(_STOP_S)
        self.connection.close()


def _stop_all(workers: list[_Worker], folder: Path) -> None:
    for worker in workers:  # all at once: each takes a moment to exit
        worker.ask_to_stop()
    for worker in workers:
        worker.stop()
    workers.clear()
    shutil.rmtree(folder, ignore_errors=True)


def _usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS says), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _shared_memory_dir() -> str | None:
    """/dev/shm where it exists (files there live in memory), else the default temp folder."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _serve(connection: Connection, reference: list[str], sys_path: list[str]) -> None:
    """A worker's loop: import client_fn once, then run jobs until an empty message comes."""
    setup = WorkerSetup(reference, sys_path)
    if "torch" in sys.modules:  # the pool already uses every core: one thread each
        sys.modules["torch"].set_num_threads(1)
    mapped: tuple[str, NDArray[np.uint8]] | None = None
    while True:
        try:
            path = connection.recv_bytes().decode()
        except (EOFError, OSError):
            path = ""
        if not path:
            # Skip the interpreter's teardown: with torch loaded it takes seconds, and
            # a worker has nothing to save (its results went back over the pipe).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        message = connection.recv_bytes()
        if mapped is None or mapped[0] != path:
            mapped = None  # drop the last batch's mapping before mapping the next
            mapped = (path, _map(path))
        connection.send_bytes(run_encoded(setup, message, mapped[1].data))


def _map(path: str) -> NDArray[np.uint8]:
    """The batch file, mapped read-only (an empty file is an empty array: mmap refuses it)."""
    if os.path.getsize(path) == 0:
        return np.empty(0, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r")
