"""Tasks and results as streams of protobuf frames: the only module that knows this layout.

A stream is one ``Header`` frame (kind, task id, config or metrics, and the declared
sizes of the payload), then ``data`` frames of at most `CHUNK_BYTES` holding the
weights blob followed by the plug-in tensors blob (both safetensors blobs from
`fedloom.transport.codec`), then one ``sha256`` frame with the digest of every payload
byte. A signal (kind ``"none"``: no task came within the wait; ``"stop"``: the run is
over) is a stream of one header frame; read it with `peek_header`. The decoders check
the header against `Limits` before they allocate the one buffer the payload is read
into, and raise `DecodeError` (or `ShapeMismatch` against an expected model) for
anything else a peer may send. There is no pickle on this path.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import NoReturn, cast

import numpy as np

from fedloom.core import (
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitIns,
    FitRes,
    GetWeightsIns,
    Reply,
    Scalar,
    Task,
    Vector,
    VectorSpec,
    Weights,
    WeightsLike,
    WeightsRes,
)
from fedloom.errors import ConfigError, DecodeError, ShapeMismatch, did_you_mean
from fedloom.proto import fleet_pb2
from fedloom.transport.codec import (
    MAX_HEADER_BYTES,
    decode_weights,
    encode_weights,
    weights_blob_parts,
)

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_LIMITS",
    "WIRE_SCHEMA",
    "Limits",
    "decode_result",
    "decode_task",
    "NO_TASK",
    "STOP",
    "encode_result",
    "encode_signal",
    "encode_task",
    "peek_header",
    "scalars_from_proto",
    "scalars_to_proto",
]

WIRE_SCHEMA = 1
"""The frame layout this module writes and reads (``Header.schema``)."""

CHUNK_BYTES = 4 * 1024 * 1024
"""Largest ``data`` frame the encoders write (4 MiB, gRPC's default message limit)."""

NO_TASK = "none"
"""The kind of a signal stream that says no task came within the client's wait."""

STOP = "stop"
"""The kind of a signal stream that says the run is over and the client should leave."""

_INT64 = (-(2**63), 2**63 - 1)
# kind -> (carries a weights blob, may carry a plug-in tensors blob)
_TASK_KINDS = {
    "fit": (True, True),
    "evaluate": (True, False),
    "get_weights": (False, False),
}
_RESULT_KINDS = {
    "fit": (True, True),
    "evaluate": (False, False),
    "weights": (True, False),
    "failure": (False, False),
}
_RESEND = "The stream is damaged or was not written by fedloom.transport.grpc.wire; send it again."
_SAME_VERSION = "Run the same fedloom version on both sides."
_SAME_MODEL = "Check that both sides build the same model (compare the VectorSpec sent in round 0)."


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What a decoder accepts from a peer, checked before it allocates anything.

    Attributes:
        max_message_bytes: largest payload (weights blob plus tensors blob) of one stream;
            the decoder allocates the declared payload up front, so this bounds the memory
            one stream can claim.
        max_header_bytes: largest serialized ``Header`` frame.
        max_config_entries: most entries in the header's config map, and in its metrics map.
    """

    max_message_bytes: int = 4 * 1024**3
    max_header_bytes: int = 1024**2
    max_config_entries: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_header_bytes", "max_config_entries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"Limits.{name} must be a non-negative int, got {value!r}. "
                    "Pass a size in bytes (or a count of entries).",
                    field=name,
                    value=value,
                )


DEFAULT_LIMITS = Limits()
"""4 GiB of payload, a 1 MiB header and 1024 config (and metrics) entries per stream."""


@dataclass(frozen=True, slots=True)
class _Stream:
    """Which stream is being read and from whom, for error messages."""

    message: str  # "task stream" | "result stream"
    who: str  # "the server" | "client 'c3'"
    client_id: str | None

    def fail(self, field: str, problem: str, fix: str = _RESEND) -> NoReturn:
        raise DecodeError(
            f"{self.who}: {self.message} field '{field}' {problem}. {fix}",
            client_id=self.client_id,
        )


def scalars_to_proto(
    scalars: Mapping[str, Scalar], target: MutableMapping[str, fleet_pb2.Scalar]
) -> None:
    """Copy config or metrics values into a protobuf ``map<string, Scalar>``.

    Args:
        scalars: the values; bool, int (within int64), float or str.
        target: the protobuf map field to fill (``header.config``, for instance).

    Raises:
        ConfigError: a key is not a str, or a value is of another type or out of range.
    """
    for key, value in scalars.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be str, got {key!r}.", field="config", value=key)
        if not isinstance(value, bool | int | float | str):
            raise ConfigError(
                f"config['{key}'] is {type(value).__name__}; a config or metrics value is "
                "bool, int, float or str. Convert it with int(...), float(...) or str(...).",
                field=key,
                value=value,
            )
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            raise ConfigError(
                f"config['{key}'] is {value}, outside the int64 range the wire carries. "
                "Send it as a float or a str.",
                field=key,
                value=value,
            )
        try:
            entry = target[key]
            if isinstance(value, bool):
                entry.b = value
            elif isinstance(value, int):
                entry.i = value
            elif isinstance(value, float):
                entry.f = value
            else:
                entry.s = value
        except (ValueError, TypeError) as exc:  # e.g. a lone surrogate, which is not UTF-8
            raise ConfigError(
                f"config['{key}'] cannot be sent ({exc}). Use valid Unicode strings.",
                field=key,
                value=value,
            ) from exc


def scalars_from_proto(
    scalars: Mapping[str, fleet_pb2.Scalar], *, field: str = "config"
) -> dict[str, Scalar]:
    """Read a protobuf ``map<string, Scalar>`` back into bool, int, float and str values.

    Args:
        scalars: the protobuf map field.
        field: its name, for messages.

    Raises:
        DecodeError: an entry holds no value.
    """
    values: dict[str, Scalar] = {}
    for key, scalar in scalars.items():
        kind = scalar.WhichOneof("value")
        if kind is None:
            raise DecodeError(
                f"field '{field}' entry {key!r:.80} holds no value; expected one of bool, int, "
                f"float or str. {_RESEND}"
            )
        values[key] = _scalar_value(scalar, kind)
    return values


def _scalar_value(scalar: fleet_pb2.Scalar, kind: str) -> Scalar:
    if kind == "b":
        return bool(scalar.b)
    if kind == "i":
        return int(scalar.i)
    if kind == "f":
        return float(scalar.f)
    return str(scalar.s)


def encode_task(
    task_id: str,
    task: Task,
    *,
    session: str,
    run_id: str = "",
    server_round: int = 0,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[fleet_pb2.Frame]:
    """Encode a task as frames.

    Everything is checked and encoded before this returns; the iterator only slices.

    Args:
        task_id: binds the result to this task (and so to its run, round and client).
        task: the task.
        session: the session of the client that pulls it.
        run_id: the server's run; the result must echo it.
        server_round: the round the task belongs to; the result must echo it.
        chunk_bytes: largest ``data`` frame.

    Raises:
        ConfigError: a config value or plug-in tensor cannot be encoded, or `chunk_bytes` < 1.
    """
    header = _bound_header(task_id, session, run_id, server_round)
    blobs: tuple[Blob, ...] = ()
    if isinstance(task, GetWeightsIns):
        header.kind = "get_weights"
    elif isinstance(task, EvaluateIns):
        header.kind = "evaluate"
        blobs = (weights_blob_parts(task.weights),)
    elif isinstance(task, FitIns):
        header.kind = "fit"
        blobs = (weights_blob_parts(task.weights), (_encode_tensors(task.tensors),))
    else:
        raise ConfigError(
            f"cannot encode a task of type {type(task).__name__}; expected FitIns, "
            "EvaluateIns or GetWeightsIns.",
            field="task",
        )
    scalars_to_proto(task.config, header.config)
    return _frames(header, blobs, chunk_bytes)


def encode_signal(kind: str, *, session: str) -> Iterator[fleet_pb2.Frame]:
    """Encode a signal instead of a task: `NO_TASK` (none came in time) or `STOP` (run over).

    Raises:
        ConfigError: `kind` is neither.
    """
    if kind not in (NO_TASK, STOP):
        raise ConfigError(
            f"a signal is '{NO_TASK}' or '{STOP}', got {kind!r}."
            f"{did_you_mean(kind, (NO_TASK, STOP))}",
            field="kind",
            value=kind,
        )
    return iter(
        (fleet_pb2.Frame(header=fleet_pb2.Header(schema=WIRE_SCHEMA, kind=kind, session=session)),)
    )


def encode_result(
    task_id: str,
    reply: Reply,
    *,
    session: str,
    run_id: str = "",
    server_round: int = 0,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[fleet_pb2.Frame]:
    """Encode a client's reply to task `task_id` as frames.

    Weights given as a mapping are converted with ``Weights(...)``; a list of arrays has
    no names, so conform it first (``ins.weights.conform(value, client_id=...)``).
    A `Failure` travels as its reason only. `run_id` and `server_round` echo the task's
    header (`peek_header`): the server refuses a result bound to another run or round.

    Raises:
        ConfigError: a metrics value, weights or plug-in tensor cannot be encoded, or
            `chunk_bytes` < 1.
    """
    header = _bound_header(task_id, session, run_id, server_round)
    blobs: tuple[Blob, ...] = ()
    if isinstance(reply, FitRes):
        header.kind = "fit"
        header.num_examples = reply.num_examples
        scalars_to_proto(reply.metrics, header.metrics)
        weights = weights_blob_parts(_as_weights(reply.weights))
        blobs = (weights, (_encode_tensors(reply.tensors),))
    elif isinstance(reply, EvaluateRes):
        header.kind = "evaluate"
        header.num_examples = reply.num_examples
        header.loss = reply.loss
        scalars_to_proto(reply.metrics, header.metrics)
    elif isinstance(reply, WeightsRes):
        header.kind = "weights"
        blobs = (weights_blob_parts(_as_weights(reply.weights)),)
    elif isinstance(reply, Failure):
        header.kind = "failure"
        header.error = reply.reason
    else:
        raise ConfigError(
            f"cannot encode a reply of type {type(reply).__name__}; expected FitRes, "
            "EvaluateRes, WeightsRes or Failure.",
            field="reply",
        )
    return _frames(header, blobs, chunk_bytes)


def decode_task(
    frames: Iterable[fleet_pb2.Frame],
    *,
    limits: Limits = DEFAULT_LIMITS,
    expected: VectorSpec | None = None,
) -> tuple[str, Task]:
    """Decode the frames of `encode_task` into ``(task_id, task)``.

    A pull may answer with a signal instead (`encode_signal`): read the header with
    `peek_header` first, and decode only when its kind is not `NO_TASK` or `STOP`.

    Args:
        frames: the stream, header first.
        limits: what to accept before allocating.
        expected: the client's model; weights of another layout raise `ShapeMismatch`.

    Raises:
        DecodeError: the stream is malformed, truncated, over `limits`, or damaged.
        ShapeMismatch: the weights do not match `expected`.
    """
    stream = _Stream("task stream", "the server", None)
    header, payload = _read(frames, stream, _TASK_KINDS, limits, expected)
    config = _scalars(header.config, stream, "config")
    task_id = str(header.task_id)
    if header.kind == "get_weights":
        return task_id, GetWeightsIns(config=config)
    weights = _decode_weights(payload, header, stream, limits, expected)
    if header.kind == "evaluate":
        return task_id, EvaluateIns(weights=weights, config=config)
    tensors = _decode_tensors(payload, header, stream, limits)
    return task_id, FitIns(weights=weights, config=config, tensors=tensors)


def decode_result(
    frames: Iterable[fleet_pb2.Frame],
    *,
    limits: Limits = DEFAULT_LIMITS,
    expected: VectorSpec | None,
    source: str,
    client_id: str | None = None,
) -> tuple[str, Reply]:
    """Decode the frames of `encode_result` into ``(task_id, reply)``.

    To choose `expected` and `source` from the task id, read the header first with
    `peek_header` and pass on the iterator it returns.

    Args:
        frames: the stream, header first.
        limits: what to accept before allocating.
        expected: the global model; weights of another layout raise `ShapeMismatch`.
        source: who sent the stream, for messages (``"client 'c3'"``).
        client_id: the sender's id, carried by errors and given to a decoded `Failure`
            (which gets `source` when this is ``None``).

    Raises:
        DecodeError: the stream is malformed, truncated, over `limits`, or damaged.
        ShapeMismatch: the weights do not match `expected`.
    """
    stream = _Stream("result stream", source, client_id)
    header, payload = _read(frames, stream, _RESULT_KINDS, limits, expected)
    metrics = _scalars(header.metrics, stream, "metrics")
    task_id = str(header.task_id)
    num_examples = int(header.num_examples)
    if header.kind == "failure":
        failed = source if client_id is None else client_id
        return task_id, Failure(client_id=failed, reason=str(header.error))
    if header.kind == "evaluate":
        loss = float(header.loss)
        if not math.isfinite(loss):
            stream.fail("loss", f"is {loss}; expected a finite number", "Check the client's data.")
        return task_id, EvaluateRes(loss=loss, num_examples=num_examples, metrics=metrics)
    weights = _decode_weights(payload, header, stream, limits, expected)
    if header.kind == "weights":
        return task_id, WeightsRes(weights=weights)
    tensors = _decode_tensors(payload, header, stream, limits)
    return task_id, FitRes(
        weights=weights, num_examples=num_examples, metrics=metrics, tensors=tensors
    )


def peek_header(
    frames: Iterable[fleet_pb2.Frame], *, message: str = "result stream"
) -> tuple[fleet_pb2.Header, Iterator[fleet_pb2.Frame]]:
    """Read the header of a stream without consuming it.

    Returns:
        The header, and an iterator over the whole stream (header included) to decode.

    Raises:
        DecodeError: the stream is empty or does not start with a header.
    """
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None or first.WhichOneof("part") != "header":
        part = "nothing" if first is None else _part(first)
        raise DecodeError(
            f"{message} must start with a 'header' frame, but it starts with {part}. {_RESEND}"
        )
    return first.header, itertools.chain((first,), iterator)


def _bound_header(task_id: str, session: str, run_id: str, server_round: int) -> fleet_pb2.Header:
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise ConfigError(
            f"server_round must be a non-negative int, got {server_round!r}.",
            field="server_round",
            value=server_round,
        )
    return fleet_pb2.Header(
        schema=WIRE_SCHEMA,
        task_id=task_id,
        session=session,
        run_id=run_id,
        server_round=server_round,
    )


Blob = tuple[bytes | memoryview, ...]
"""One blob as the parts it is sent from (a header and a view of the tensors: no copy)."""


def _frames(
    header: fleet_pb2.Header, blobs: tuple[Blob, ...], chunk_bytes: int
) -> Iterator[fleet_pb2.Frame]:
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ConfigError(
            f"chunk_bytes must be a positive int, got {chunk_bytes!r}.",
            field="chunk_bytes",
            value=chunk_bytes,
        )
    header.weights_bytes = sum(len(part) for part in blobs[0]) if blobs else 0
    header.tensors_bytes = sum(len(part) for part in blobs[1]) if len(blobs) > 1 else 0
    return _slice(header, [part for blob in blobs for part in blob], chunk_bytes)


def _slice(
    header: fleet_pb2.Header, parts: list[bytes | memoryview], chunk_bytes: int
) -> Iterator[fleet_pb2.Frame]:
    """Header, then the parts' bytes in frames of at most `chunk_bytes`, then the digest."""
    yield fleet_pb2.Frame(header=header)
    digest = hashlib.sha256()
    pending = bytearray()
    for part in parts:
        view = memoryview(part)
        start = 0
        if pending:  # top up a frame a previous part left short
            start = min(chunk_bytes - len(pending), len(view))
            pending += view[:start]
            if len(pending) < chunk_bytes:
                continue
            digest.update(pending)
            yield fleet_pb2.Frame(data=bytes(pending))
            pending = bytearray()
        for offset in range(start, len(view), chunk_bytes):
            chunk = view[offset : offset + chunk_bytes]
            if len(chunk) < chunk_bytes:
                pending += chunk
                break
            digest.update(chunk)
            yield fleet_pb2.Frame(data=bytes(chunk))
    if pending:
        digest.update(pending)
        yield fleet_pb2.Frame(data=bytes(pending))
    yield fleet_pb2.Frame(sha256=digest.digest())


def _as_weights(value: WeightsLike) -> Weights:
    if isinstance(value, Weights):
        return value
    if isinstance(value, Mapping):
        return Weights(value)
    raise ConfigError(
        f"cannot encode weights given as {type(value).__name__}: they carry no tensor names. "
        "Return Weights or a name -> array mapping, or conform the arrays with "
        "ins.weights.conform(value, client_id=...) first.",
        field="weights",
    )


def _encode_tensors(tensors: Mapping[str, Vector]) -> bytes:
    if not tensors:
        return b""
    arrays = {name: np.asarray(value) for name, value in tensors.items()}
    for name, array in arrays.items():
        if array.ndim != 1:
            raise ConfigError(
                f"plug-in tensor '{name}' has shape {array.shape}; plug-in tensors are flat "
                "1-D vectors. Send value.ravel() and reshape it on the other side.",
                field="tensors",
                value=name,
            )
    return encode_weights(Weights(arrays))


def _read(
    frames: Iterable[fleet_pb2.Frame],
    stream: _Stream,
    kinds: Mapping[str, tuple[bool, bool]],
    limits: Limits,
    expected: VectorSpec | None,
) -> tuple[fleet_pb2.Header, bytearray]:
    """Check the header, then read the payload into one buffer of the declared size."""
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        stream.fail("header", "is missing: the stream is empty")
    if first.WhichOneof("part") != "header":
        stream.fail("header", f"must come first, but frame 1 is {_part(first)}")
    header = first.header
    total = _check_header(header, stream, kinds, limits, expected)
    payload = bytearray(total)
    received = 0
    digest = hashlib.sha256()
    checked = False
    for number, frame in enumerate(iterator, start=2):
        part = frame.WhichOneof("part")
        if checked:
            stream.fail("sha256", f"must be the last frame, but frame {number} is {_part(frame)}")
        if part == "data":
            data = frame.data  # each read of the field copies it: read it once
            size = len(data)
            if size == 0:
                stream.fail("data", f"of frame {number} is empty")
            if received + size > total:
                stream.fail(
                    "data",
                    f"carries {received + size - total} bytes beyond the {total} declared by "
                    "weights_bytes + tensors_bytes",
                )
            payload[received : received + size] = data
            digest.update(data)
            del data
            received += size
        elif part == "sha256":
            if received < total:
                stream.fail("data", f"ended after {received} of {total} declared bytes (truncated)")
            if frame.sha256 != digest.digest():
                stream.fail("sha256", "does not match the payload (damaged in transit)")
            checked = True
        elif part == "header":
            stream.fail("header", f"must come only once, but frame {number} is another header")
        else:
            stream.fail("part", f"of frame {number} is not set: the frame is empty")
    if received < total:
        stream.fail("data", f"ended after {received} of {total} declared bytes (truncated)")
    if not checked:
        stream.fail("sha256", "is missing: the stream ended before its checksum (truncated)")
    return header, payload


def _part(frame: fleet_pb2.Frame) -> str:
    part = frame.WhichOneof("part")
    return "an empty frame" if part is None else f"a '{part}' frame"


def _check_header(
    header: fleet_pb2.Header,
    stream: _Stream,
    kinds: Mapping[str, tuple[bool, bool]],
    limits: Limits,
    expected: VectorSpec | None,
) -> int:
    """Validate `header` against `limits`, its kind and `expected`; return the payload size."""
    if header.schema != WIRE_SCHEMA:
        stream.fail(
            "schema",
            f"is {header.schema}; this fedloom reads wire schema {WIRE_SCHEMA}",
            _SAME_VERSION,
        )
    size = header.ByteSize()
    if size > limits.max_header_bytes:
        stream.fail(
            "header",
            f"is {size} bytes, over the limit max_header_bytes={limits.max_header_bytes}",
            "Send less config or metrics, or pass larger Limits(max_header_bytes=...).",
        )
    kind = str(header.kind)
    if kind in (NO_TASK, STOP) and kinds is _TASK_KINDS:
        stream.fail(
            "kind",
            f"is '{kind}': the stream is a signal, not a task",
            "Read the kind with peek_header and decode only tasks.",
        )
    if kind not in kinds:
        stream.fail(
            "kind",
            f"is {kind!r:.40}; expected one of {', '.join(kinds)}",
            f"{_SAME_VERSION}{did_you_mean(kind, kinds)}",
        )
    for field in ("config", "metrics"):
        entries = len(getattr(header, field))
        if entries > limits.max_config_entries:
            stream.fail(
                field,
                f"has {entries} entries, over the limit max_config_entries="
                f"{limits.max_config_entries}",
                "Send fewer entries, or pass larger Limits(max_config_entries=...).",
            )
    weights_bytes, tensors_bytes = int(header.weights_bytes), int(header.tensors_bytes)
    total = weights_bytes + tensors_bytes
    if total > limits.max_message_bytes:
        stream.fail(
            "weights_bytes",
            f"and tensors_bytes declare {total} bytes, over the limit max_message_bytes="
            f"{limits.max_message_bytes}",
            "Pass larger Limits(max_message_bytes=...) if the model really is this large.",
        )
    has_weights, has_tensors = kinds[kind]
    if has_weights != (weights_bytes > 0):
        carries = "carries a weights blob" if has_weights else "carries no weights"
        stream.fail("weights_bytes", f"is {weights_bytes}, but a '{kind}' stream {carries}")
    if tensors_bytes and not has_tensors:
        stream.fail("tensors_bytes", f"is {tensors_bytes}, but a '{kind}' stream has no tensors")
    if expected is not None and has_weights:
        # A blob is the 8-byte length, a JSON header of at most MAX_HEADER_BYTES, the data.
        low = expected.nbytes + 8
        if not low <= weights_bytes <= low + MAX_HEADER_BYTES:
            raise ShapeMismatch(
                f"{stream.who} declared a weights blob of {weights_bytes} bytes; the expected "
                f"model ({expected.size} values of {expected.dtype}) needs between {low} and "
                f"{low + MAX_HEADER_BYTES}. {_SAME_MODEL}",
                client_id=stream.client_id,
            )
    return total


def _scalars(
    scalars: Mapping[str, fleet_pb2.Scalar], stream: _Stream, field: str
) -> dict[str, Scalar]:
    try:
        return scalars_from_proto(scalars, field=field)
    except DecodeError as exc:
        raise DecodeError(
            f"{stream.who}: {stream.message} {exc}", client_id=stream.client_id
        ) from None


def _decode_weights(
    payload: bytearray,
    header: fleet_pb2.Header,
    stream: _Stream,
    limits: Limits,
    expected: VectorSpec | None,
) -> Weights:
    blob = memoryview(payload)[: int(header.weights_bytes)]
    try:
        # codec reads `data` through the buffer protocol only, so a view avoids a copy.
        return decode_weights(
            cast(bytes, blob),
            expected=expected,
            max_bytes=limits.max_message_bytes,
            source=stream.who,
            copy=False,  # the payload buffer is ours alone: the weights may view it
        )
    except (DecodeError, ShapeMismatch) as exc:
        exc.client_id = stream.client_id
        raise


def _decode_tensors(
    payload: bytearray, header: fleet_pb2.Header, stream: _Stream, limits: Limits
) -> dict[str, Vector]:
    if not header.tensors_bytes:
        return {}
    blob = memoryview(payload)[int(header.weights_bytes) :]
    source = f"{stream.who} (plug-in tensors)"
    try:
        tensors = decode_weights(
            cast(bytes, blob), max_bytes=limits.max_message_bytes, source=source
        )
    except DecodeError as exc:
        exc.client_id = stream.client_id
        raise
    for name in tensors:
        if tensors[name].ndim != 1:
            stream.fail("tensors", f"entry '{name}' has shape {tensors[name].shape}; expected 1-D")
    return dict(tensors)
