"""Jobs for workers in other processes (the process pool, Ray): JSON headers and raw arrays.

A job travels as a JSON header (who, which task, its config) followed by the
client's state as raw arrays. The weights and plug-in tensors a round sends
to every client travel once per round, as one shared read-only buffer (a file
the workers map, a Ray object) that each job only points into. A reply comes
back as a JSON header followed by the result's flat arrays. Workers build the
client with the same ``client_fn``, imported by name, and run it with the same
`run_job` as the sequential engine, so a task's result does not depend on
where it ran.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedloom.core import (
    ClientContext,
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitIns,
    FitRes,
    GetWeightsIns,
    Reply,
    Task,
    VectorSpec,
    Weights,
    WeightsLike,
    WeightsRes,
)
from fedloom.core.context import SplitCache
from fedloom.core.dispatch import ClientState
from fedloom.errors import ConfigError
from fedloom.transport.inprocess import ClientFn, Job, run_job

__all__ = [
    "Shared",
    "WorkerSetup",
    "decode_reply",
    "encode_job",
    "function_reference",
    "run_encoded",
    "share",
]

_LENGTH = 8  # bytes of the little-endian header length that starts each message


def function_reference(function: Callable[..., Any], *, engine: str) -> list[str]:
    """``[module, qualname]`` that a fresh process imports `function` by, or a ConfigError."""
    module_name = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    found: Any = None
    if isinstance(module_name, str) and isinstance(qualname, str) and "<" not in qualname:
        found = sys.modules.get(module_name)
        for part in qualname.split("."):
            found = getattr(found, part, None)
    main_without_file = module_name == "__main__" and not hasattr(
        sys.modules.get("__main__"), "__file__"
    )
    if found is not function or main_without_file:
        raise ConfigError(
            f"engine={engine!r} runs client_fn in other processes, which import it by name, "
            f"but {function!r} cannot be imported by name (a lambda, a closure, a partial or "
            "a function defined interactively). Define client_fn at the top level of a module "
            "(e.g. task.py: def client_fn(context): ...), or use engine='sequential'.",
            field="client_fn",
            value=repr(function),
        )
    return [str(module_name), str(qualname)]


def _partitioner_reference(partitioner: object) -> dict[str, Any] | None:
    """How a worker rebuilds the partitioner: its class by name and its fields."""
    if partitioner is None:
        return None
    cls = type(partitioner)
    if not dataclasses.is_dataclass(partitioner):
        raise ConfigError(
            f"the process and Ray engines rebuild the partitioner in each worker from its "
            f"class and fields, but {cls.__name__} is not a dataclass. Use a partitioner "
            "from fedloom.data, or make yours a frozen dataclass defined at module level.",
            field="partitioner",
            value=cls.__name__,
        )
    fields = {f.name: getattr(partitioner, f.name) for f in dataclasses.fields(partitioner)}
    return {"class": [cls.__module__, cls.__qualname__], "fields": fields}


@dataclasses.dataclass(frozen=True, slots=True)
class Shared:
    """A batch's shared buffer, and where each job's weights and tensors lie in it."""

    buffer: bytes
    """Every distinct weights vector and tensor set of the batch, end to end."""
    places: list[dict[str, Any]]
    """Per job: the offsets, spec and tensor layout it reads from `buffer` (JSON-able)."""


def share(jobs: Sequence[Job]) -> Shared:
    """Lay out the weights and tensors of `jobs` once each, however many jobs send them."""
    parts: list[bytes | memoryview] = []
    size = 0
    placed: dict[int, dict[str, Any]] = {}
    places: list[dict[str, Any]] = []

    def put(array: NDArray[Any]) -> int:
        nonlocal size
        padding = -size % 8  # every array starts 8-byte aligned
        if padding:
            parts.append(bytes(padding))
            size += padding
        start = size
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        parts.append(data)
        size += data.nbytes
        return start

    for job in jobs:
        task = job.task
        place: dict[str, Any] = {}
        if isinstance(task, FitIns | EvaluateIns):
            key = id(task.weights)
            if key not in placed:
                spec = task.weights.spec
                placed[key] = {
                    "offset": put(task.weights.flat),
                    "names": list(spec.names),
                    "shapes": [list(shape) for shape in spec.shapes],
                    "dtype": spec.dtype,
                }
            place["weights"] = placed[key]
        if isinstance(task, FitIns) and task.tensors:
            key = id(task.tensors)
            if key not in placed:
                placed[key] = {
                    "layout": [
                        [name, put(np.asarray(value)), int(np.asarray(value).size), _dtype(value)]
                        for name, value in task.tensors.items()
                    ]
                }
            place["tensors"] = placed[key]["layout"]
        places.append(place)
    return Shared(buffer=b"".join(parts), places=places)


def encode_job(job: Job, place: Mapping[str, Any], index: int) -> bytes:
    """The job as a message: a JSON header, then the client's state as raw arrays."""
    task = job.task
    kind = (
        "fit" if isinstance(task, FitIns) else "evaluate" if isinstance(task, EvaluateIns) else ""
    )
    state_layout, state_bytes = _arrays(job.state)
    header = {
        "index": index,
        "client_id": job.client_id,
        "partition_id": job.context.partition_id,
        "num_partitions": job.context.num_partitions,
        "seed": job.context.seed,
        "device": job.context.device,
        "partitioner": _partitioner_reference(job.context.partitioner),
        "kind": kind or "weights",
        "config": dict(task.config),
        "place": dict(place),
        "state": state_layout,
    }
    return _message(header, state_bytes)


class WorkerSetup:
    """What a worker keeps between jobs: the imported client_fn, partitioners, splits."""

    def __init__(self, reference: Sequence[str], sys_path: Iterable[str] = ()) -> None:
        for entry in reversed(list(sys_path)):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        self.client_fn: ClientFn = _import(reference)
        self.splits = SplitCache()
        self._partitioners: dict[str, object] = {}

    def partitioner(self, reference: Mapping[str, Any] | None) -> Any:
        """The partitioner a job names, built once per distinct one."""
        if reference is None:
            return None
        key = json.dumps(reference, sort_keys=True)
        if key not in self._partitioners:
            cls = _import(reference["class"])
            self._partitioners[key] = cls(**reference["fields"])
        return self._partitioners[key]


def run_encoded(setup: WorkerSetup, message: bytes, shared: memoryview | bytes) -> bytes:
    """Run one encoded job in a worker and return the encoded reply (the worker side)."""
    header, body = _split(message)
    index = int(header["index"])
    client_id = str(header["client_id"])
    try:
        state = _read_arrays(header["state"], body, 0)
        context = ClientContext(
            client_id=client_id,
            partition_id=int(header["partition_id"]),
            num_partitions=int(header["num_partitions"]),
            seed=int(header["seed"]),
            partitioner=setup.partitioner(header["partitioner"]),
            device=str(header["device"]),
            cache=setup.splits,
        )
        job = Job(client_id, context, _task(header, shared), state)
    except Exception as exc:  # a job this worker cannot read fails alone
        failure = Failure(client_id=client_id, reason=f"the worker could not read the job: {exc}")
        return encode_reply(index, failure, {})
    reply, new_state = run_job(setup.client_fn, job)
    try:
        return encode_reply(index, reply, new_state)
    except Exception as exc:  # e.g. weights that are not arrays of numbers
        reason = f"client '{client_id}' returned a result that cannot be sent: {exc}"
        return encode_reply(index, Failure(client_id=client_id, reason=reason), new_state)


def encode_reply(index: int, reply: Reply, state: ClientState) -> bytes:
    """A reply as a message: a JSON header, then its weights, tensors and state as raw arrays."""
    header: dict[str, Any] = {"index": index}
    chunks: list[bytes] = []
    if isinstance(reply, Failure):
        header.update(kind="failure", reason=reply.reason)
    elif isinstance(reply, EvaluateRes):
        header.update(
            kind="evaluate",
            loss=reply.loss,
            num_examples=reply.num_examples,
            metrics=dict(reply.metrics),
        )
    else:
        weights = _as_weights(reply.weights)
        header["weights"] = {
            "names": list(weights.spec.names),
            "shapes": [list(shape) for shape in weights.spec.shapes],
            "dtype": weights.spec.dtype,
        }
        chunks.append(weights.flat.tobytes())
        if isinstance(reply, FitRes):
            layout, data = _arrays(reply.tensors, start=len(chunks[0]))
            header.update(
                kind="fit",
                num_examples=reply.num_examples,
                metrics=dict(reply.metrics),
                tensors=layout,
            )
            chunks.append(data)
        else:
            header["kind"] = "weights"
    offset = sum(map(len, chunks))
    layout, data = _arrays(state, start=offset)
    header["state"] = layout
    chunks.append(data)
    return _message(header, b"".join(chunks))


def decode_reply(message: bytes, jobs: Sequence[Job]) -> tuple[int, Reply, ClientState]:
    """``(job index, reply, client state)`` from a worker's reply to one of `jobs`."""
    header, body = _split(message)
    index = int(header["index"])
    state = _read_arrays(header["state"], body, 0)
    kind = header["kind"]
    if kind == "failure":
        failure = Failure(client_id=jobs[index].client_id, reason=str(header["reason"]))
        return index, failure, state
    if kind == "evaluate":
        reply: Reply = EvaluateRes(header["loss"], header["num_examples"], header["metrics"])
        return index, reply, state
    layout = header["weights"]
    spec = VectorSpec(
        names=tuple(layout["names"]),
        shapes=tuple(tuple(shape) for shape in layout["shapes"]),
        dtype=layout["dtype"],
    )
    flat = np.frombuffer(body, dtype=spec.dtype, count=spec.size)
    weights = Weights.from_flat(spec, flat)
    if kind == "weights":
        return index, WeightsRes(weights=weights), state
    tensors = _read_arrays(header["tensors"], body, 0)
    return index, FitRes(weights, header["num_examples"], header["metrics"], tensors), state


def _task(header: Mapping[str, Any], shared: memoryview | bytes) -> Task:
    config = header["config"]
    if header["kind"] == "weights":
        return GetWeightsIns(config=config)
    place = header["place"]["weights"]
    spec = VectorSpec(
        names=tuple(place["names"]),
        shapes=tuple(tuple(shape) for shape in place["shapes"]),
        dtype=place["dtype"],
    )
    flat = np.frombuffer(shared, dtype=spec.dtype, count=spec.size, offset=place["offset"])
    weights = Weights.from_flat(spec, flat)
    if header["kind"] == "evaluate":
        return EvaluateIns(weights=weights, config=config)
    tensors = {
        name: np.frombuffer(shared, dtype=dtype, count=size, offset=offset)
        for name, offset, size, dtype in header["place"].get("tensors", [])
    }
    return FitIns(weights=weights, config=config, tensors=tensors)


def _as_weights(value: WeightsLike) -> Weights:
    if isinstance(value, Weights):
        return value
    if isinstance(value, Mapping):
        return Weights(value)
    return Weights({str(index): array for index, array in enumerate(value)})


def _dtype(value: object) -> str:
    return str(np.asarray(value).dtype.str)


def _arrays(arrays: Mapping[str, Any], *, start: int = 0) -> tuple[list[list[Any]], bytes]:
    """The layout ``[[name, offset, size, dtype], ...]`` of `arrays` end to end, and their bytes."""
    layout: list[list[Any]] = []
    chunks: list[bytes] = []
    offset = start
    for name, value in arrays.items():
        array = np.ascontiguousarray(value).reshape(-1)
        layout.append([name, offset, int(array.size), array.dtype.str])
        data = array.tobytes()
        chunks.append(data)
        offset += len(data)
    return layout, b"".join(chunks)


def _read_arrays(
    layout: Sequence[Sequence[Any]], body: memoryview | bytes, base: int
) -> ClientState:
    return {
        str(name): np.frombuffer(body, dtype=dtype, count=size, offset=base + offset)
        for name, offset, size, dtype in layout
    }


def _message(header: Mapping[str, Any], body: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return len(text).to_bytes(_LENGTH, "little") + text + body


def _split(message: bytes) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(message)
    length = int.from_bytes(view[:_LENGTH], "little")
    header: dict[str, Any] = json.loads(bytes(view[_LENGTH : _LENGTH + length]))
    return header, view[_LENGTH + length :]


def _import(reference: Sequence[str]) -> Any:
    module_name, qualname = reference
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target
