"""Simulation engines: who runs the virtual clients' tasks, chosen with one option.

Every engine is an `Executor` behind the one `InProcessChannel`, so the
orchestrator, the virtual clock, deadlines and asynchronous schedules are the
same whichever runs the tasks, and so are the results for the same seed (each
task's seed derives from the run seed, its round and its client id, never from
where it ran):

- ``"sequential"``: one task after another in this process (the default);
- ``"process"``: a pool of worker processes on this machine (`ProcessExecutor`);
- ``"ray"``: tasks on a Ray cluster, a local one when no address is given;
- ``"vectorized"``: the fit tasks of a round trained at once in one batched
  PyTorch computation, where the model allows (`VectorizedExecutor`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence

from fedloom.core import ClientId, FitIns, FitRes, Reply
from fedloom.core.dispatch import ClientState, run_task
from fedloom.core.messages import Failure
from fedloom.core.protocols import Client
from fedloom.errors import ConfigError, did_you_mean
from fedloom.transport.inprocess import ClientFn, Executor, Job, LocalExecutor

__all__ = [
    "DEVICES",
    "ENGINES",
    "VectorizedExecutor",
    "check_device",
    "check_engine",
    "make_executor",
    "resolve_device",
]

logger = logging.getLogger(__name__)

ENGINES = ("sequential", "process", "ray", "vectorized")
"""The names of the simulation engines (``simulate(engine=...)``, ``[simulation].engine``)."""

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
"""The forms of the ``device`` option."""

_CUDA = re.compile(r"cuda(:\d+)?")


def check_engine(engine: object, *, field: str = "engine") -> str:
    """`engine` if it names an engine, else a ConfigError listing them."""
    if not isinstance(engine, str) or engine not in ENGINES:
        hint = did_you_mean(engine, ENGINES) if isinstance(engine, str) else ""
        raise ConfigError(
            f"unknown simulation engine {engine!r}; choose one of: {', '.join(ENGINES)}.{hint}",
            field=field,
            value=engine,
        )
    return engine


def check_device(device: object, *, field: str = "device") -> str:
    """`device` if it has a valid form ("auto", "cpu", "cuda", "cuda:N"), else a ConfigError."""
    if not isinstance(device, str) or not (device in ("auto", "cpu") or _CUDA.fullmatch(device)):
        hint = did_you_mean(device, ("auto", "cpu", "cuda")) if isinstance(device, str) else ""
        raise ConfigError(
            f"unknown device {device!r}; choose one of: {', '.join(DEVICES)} "
            f"(N: a GPU index, e.g. cuda:1).{hint}",
            field=field,
            value=device,
        )
    return device


def resolve_device(device: str, *, field: str = "device") -> str:
    """The device clients compute on: "auto" is CUDA when torch sees a GPU, else the CPU.

    Args:
        device: "auto", "cpu", "cuda" or "cuda:N".
        field: the option's name, for errors.

    Returns:
        "cpu" or "cuda:N".

    Raises:
        ConfigError: an unknown device, or CUDA asked for where torch sees no GPU.

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    check_device(device, field=field)
    if device == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if device == "auto":
            return "cpu"
        raise ConfigError(
            f"{field}={device!r} needs PyTorch, which is not installed. Install it "
            "(pip install 'fedloom[torch]') or use device='cpu'.",
            field=field,
            value=device,
        ) from None
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        return "cuda:0" if available else "cpu"
    index = int(device.partition(":")[2] or 0)
    if index >= available:
        raise ConfigError(
            f"{field}={device!r}, but torch sees {available} CUDA device(s) here. Use "
            "device='auto' (a GPU when there is one, else the CPU) or device='cpu'.",
            field=field,
            value=device,
        )
    return f"cuda:{index}"


def make_executor(
    engine: str,
    client_fn: ClientFn,
    *,
    device: str,
    workers: int | None = None,
    ray_address: str | None = None,
) -> Executor:
    """The executor of `engine` (see this module's docstring).

    Args:
        engine: one of `ENGINES`.
        client_fn: builds a client from its context.
        device: the resolved device ("cpu", "cuda:0", ...).
        workers: processes of the "process" engine (default: one per core).
        ray_address: the Ray cluster of the "ray" engine (None: start a local one).

    Raises:
        ConfigError: an unknown engine, or one that cannot run `client_fn`.
    """
    check_engine(engine)
    if engine == "process":
        from fedloom.simulation.processes import ProcessExecutor

        return ProcessExecutor(client_fn, workers=workers)
    if engine == "ray":
        from fedloom.simulation.raycluster import RayExecutor

        return RayExecutor(client_fn, address=ray_address, num_cpus=workers)
    if engine == "vectorized":
        return VectorizedExecutor(client_fn, device=device)
    return LocalExecutor(client_fn)


class VectorizedExecutor:
    """Trains the fit tasks of a round at once with `VectorizedFit`; the rest one at a time.

    Each fit task's client is built with ``client_fn(context)`` exactly as the
    sequential engine builds it. Tasks that carry client plug-ins or client
    state, evaluate tasks, and those `VectorizedFit.unsupported` refuses run
    on the sequential path; each distinct reason is logged once, at WARNING.

    Args:
        client_fn: builds a client from its context.
        device: where the batched computation runs.
    """

    def __init__(self, client_fn: ClientFn, *, device: str = "cpu") -> None:
        from fedloom.simulation.vectorized import VectorizedFit

        self._client_fn = client_fn
        self._fit = VectorizedFit(device=device)
        self._local = LocalExecutor(client_fn)
        self._reasons: set[str] = set()

    def execute(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply, ClientState]]:
        batch: dict[ClientId, tuple[Client, FitIns]] = {}
        positions: dict[ClientId, int] = {}
        for index, job in enumerate(jobs):
            task = job.task
            if not isinstance(task, FitIns):
                self._fall_back(f"{type(task).__name__} tasks run one client at a time")
                yield next(_reindexed(self._local.execute([job]), index))
                continue
            if task.config.get("plugins") or job.state:
                self._fall_back("fit tasks with client plug-ins or client state")
                yield next(_reindexed(self._local.execute([job]), index))
                continue
            try:
                client = self._client_fn(job.context)
            except Exception as exc:  # a user's factory must not take the run down
                reason = f"client '{job.client_id}' could not be built: {type(exc).__name__}: {exc}"
                yield index, Failure(client_id=job.client_id, reason=reason, error=exc), job.state
                continue
            why = self._fit.unsupported(client, task)
            if why is not None:
                self._fall_back(why)
                reply, state = run_task(client, task, job.state, client_id=job.client_id)
                yield index, reply, state
                continue
            batch[job.client_id] = (client, task)
            positions[job.client_id] = index
        if not batch:
            return
        results = self._fit.fit(batch)
        del batch
        for client_id, index in positions.items():
            result: FitRes | Failure | None = results.get(client_id)
            if result is None:
                result = Failure(
                    client_id=client_id,
                    reason=f"the vectorized engine returned no result for client '{client_id}'",
                )
            yield index, result, jobs[index].state

    def close(self) -> None:
        """Nothing to release."""

    def _fall_back(self, reason: str) -> None:
        if reason not in self._reasons:
            self._reasons.add(reason)
            logger.warning("vectorized engine: %s; these run on the sequential path", reason)


def _reindexed(
    replies: Iterator[tuple[int, Reply, ClientState]], index: int
) -> Iterator[tuple[int, Reply, ClientState]]:
    for _, reply, state in replies:
        yield index, reply, state
