"""Structure-aware fuzzing of the wire decoders: only typed validation errors, in bounded time.

Hypothesis builds safetensors blobs and frame streams field by field, then breaks
them: huge and negative declared lengths, wrong dtypes, impossible shapes and
offsets, deep nesting, non-UTF-8 headers, truncated streams, forged and missing
frames. Each input must decode or raise `DecodeError` / `ShapeMismatch` (a
`FedloomError` for tasks) within the per-example deadline, under `Limits` that
bound what a decoder may allocate.

The default suite runs a few hundred inputs. The extended run, at least 100,000
inputs across the four decoders::

    pytest -m fuzz tests/security/test_fuzz_wire.py -s
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import random
import resource
import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fedloom.core import (
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitIns,
    FitRes,
    GetWeightsIns,
    Weights,
    WeightsRes,
)
from fedloom.errors import DecodeError, ShapeMismatch
from fedloom.proto import fleet_pb2
from fedloom.transport.codec import decode_weights, encode_weights
from fedloom.transport.grpc import (
    Limits,
    decode_result,
    decode_task,
    encode_result,
    encode_task,
    peek_header,
)

MODEL = Weights({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
VALID = encode_weights(MODEL)
LIMITS = Limits(max_message_bytes=1 << 20, max_header_bytes=1 << 14, max_config_entries=16)
QUICK_INPUTS = 300  # per decoder in the default suite
EXTENDED_INPUTS = 25_000  # per decoder under -m fuzz: 100,000 in all
VARIANTS = 20  # inputs derived from each generated structure (it, then mutations of it)
DEADLINE_MS = 2_000  # a hang fails the example
BATCH = 500  # structures per Hypothesis run
MAX_RSS_GROWTH_MIB = 512  # what all the examples of one decoder may add to the process

U64 = 2**64 - 1
sizes = st.one_of(
    st.integers(0, 64),
    st.sampled_from([0, 1, 7, 8, 2**31, 2**32, 2**53, 2**62, 2**63, U64]),
    st.integers(0, U64),
)
signed = st.one_of(sizes, st.integers(-(2**64), -1), st.floats(allow_nan=True), st.none())
dtypes = st.sampled_from(["F16", "F32", "F64", "BF16", "I64", "U8", "O", "bool", "", "F32 "])
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def entries(draw: st.DrawFn, offset: int) -> tuple[dict[str, Any], int]:
    """A tensor entry: usually well formed and placed at `offset`, often broken."""
    dtype = draw(st.one_of(st.just("F32"), dtypes, json_values))
    if draw(st.booleans()):
        shape: Any = draw(st.lists(st.integers(0, 4), max_size=3))
    else:
        shape = draw(st.one_of(st.lists(signed, max_size=4), st.just([1] * 40), json_values))
    count = (
        int(np.prod(shape))
        if isinstance(shape, list) and all(isinstance(n, int) and 0 <= n <= 4 for n in shape)
        else 1
    )
    end = offset + 4 * count
    offsets: Any = [offset, end]
    if draw(st.integers(0, 3)) == 0:
        offsets = draw(st.one_of(st.lists(signed, max_size=3), json_values))
    entry: dict[str, Any] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    if draw(st.integers(0, 7)) == 0:
        entry.pop(draw(st.sampled_from(sorted(entry))))
    if draw(st.integers(0, 7)) == 0:
        entry[draw(st.text(max_size=6))] = draw(json_values)
    return entry, end if isinstance(offsets, list) and offsets == [offset, end] else offset


@st.composite
def valid_blobs(draw: st.DrawFn) -> bytes:
    """A blob `encode_weights` wrote, of random names, shapes and dtype."""
    dtype = draw(st.sampled_from(["float16", "float32", "float64"]))
    shapes = draw(st.lists(st.lists(st.integers(0, 3), max_size=3), min_size=1, max_size=3))
    return encode_weights(
        Weights({f"t{i}": np.ones(shape, dtype) for i, shape in enumerate(shapes)})
    )


@st.composite
def broken_blobs(draw: st.DrawFn) -> bytes:
    """A safetensors blob built field by field, then perhaps broken at the byte level."""
    names = draw(st.lists(st.text(max_size=6), max_size=4, unique=True))
    header: dict[str, Any] = {}
    offset = 0
    for name in names:
        header[name], offset = draw(entries(offset))
    metadata: Any = {
        "fedloom.schema": draw(st.sampled_from(["1", "1", "0", "2", ""])),
        "fedloom.names": json.dumps(
            draw(st.one_of(st.just(names), st.permutations(names), json_values))
        ),
        "fedloom.dtype": draw(
            st.one_of(st.just("float32"), st.sampled_from(["float16", "float64", "object", "int8"]))
        ),
    }
    if draw(st.integers(0, 5)) == 0:
        metadata = draw(json_values)
    header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    depth = draw(st.one_of(st.just(0), st.integers(1, 5), st.sampled_from([1000, 100_000])))
    if depth:
        text = b"[" * depth + text + b"]" * depth
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.binary(max_size=64))  # anything: not UTF-8, not JSON
    data = bytes(offset) if draw(st.booleans()) else draw(st.binary(max_size=256))
    length = len(text) if draw(st.integers(0, 3)) else draw(sizes)
    blob = struct.pack("<Q", min(length, U64)) + text + data
    if draw(st.integers(0, 4)) == 0:
        blob = blob[: draw(st.integers(0, len(blob)))]  # truncated
    return blob


blobs = st.one_of(valid_blobs(), st.just(VALID), broken_blobs())

scalars = st.one_of(
    st.builds(lambda v: fleet_pb2.Scalar(b=v), st.booleans()),
    st.builds(lambda v: fleet_pb2.Scalar(i=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: fleet_pb2.Scalar(f=v), st.floats()),
    st.builds(lambda v: fleet_pb2.Scalar(s=v), st.text(max_size=8)),
    st.just(fleet_pb2.Scalar()),  # no value
)
kinds = st.sampled_from(
    ["fit", "evaluate", "weights", "failure", "get_weights", "none", "stop", "", "pickle"]
)


def _valid_streams() -> list[list[fleet_pb2.Frame]]:
    """Streams the encoders wrote, in small chunks: mutations of them reach deep paths."""
    tensors = {"c": np.arange(4.0)}
    replies = [
        FitRes(MODEL, 3, {"acc": 0.5}, tensors),
        EvaluateRes(0.25, 3, {"acc": 0.5}),
        WeightsRes(weights=MODEL),
        Failure(client_id="f", reason="boom"),
    ]
    tasks = [
        FitIns(weights=MODEL, config={"server_round": 2}, tensors=tensors),
        EvaluateIns(weights=MODEL, config={"lr": 0.1}),
        GetWeightsIns(),
    ]
    streams = [list(encode_result("t", r, session="s", chunk_bytes=48)) for r in replies]
    return streams + [list(encode_task("t", t, session="s", chunk_bytes=48)) for t in tasks]


@st.composite
def forged_streams(draw: st.DrawFn) -> list[fleet_pb2.Frame]:
    """A task or result stream built frame by frame, then forged: sizes, order, digest."""
    weights = draw(st.one_of(st.just(VALID), blobs, st.binary(max_size=128), st.just(b"")))
    tensors = draw(st.one_of(st.just(b""), st.just(VALID), blobs))
    payload = weights + tensors
    header = fleet_pb2.Header(
        schema=draw(st.sampled_from([1, 1, 1, 0, 2, 2**32 - 1])),
        task_id=draw(st.text(max_size=8)),
        kind=draw(kinds),
        weights_bytes=len(weights) if draw(st.integers(0, 3)) else draw(sizes),
        tensors_bytes=len(tensors) if draw(st.integers(0, 3)) else draw(sizes),
        num_examples=draw(sizes),
        loss=draw(st.floats()),
        error=draw(st.text(max_size=16)),
        server_round=draw(sizes),
    )
    for field in ("config", "metrics"):
        for key, value in draw(st.dictionaries(st.text(max_size=4), scalars, max_size=20)).items():
            getattr(header, field)[key].CopyFrom(value)
    if draw(st.integers(0, 9)) == 0:
        header.error = "e" * draw(st.sampled_from([1 << 14, 1 << 15]))  # over max_header_bytes
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    bounds = [0, *cuts, len(payload)]
    frames = [fleet_pb2.Frame(header=header)]
    frames += [
        fleet_pb2.Frame(data=payload[a:b])
        for a, b in itertools.pairwise(bounds)
        if b > a or draw(st.integers(0, 9)) == 0
    ]
    digest = (
        hashlib.sha256(payload).digest()
        if draw(st.integers(0, 4))
        else draw(st.binary(max_size=40))
    )
    frames.append(fleet_pb2.Frame(sha256=digest))
    for _ in range(draw(st.integers(0, 2))):  # forge: drop, repeat or insert a frame
        where = draw(st.integers(0, len(frames)))
        action = draw(st.sampled_from(["drop", "repeat", "empty", "header", "data"]))
        if action == "drop" and frames:
            frames.pop(min(where, len(frames) - 1))
        elif action == "repeat" and frames:
            frames.insert(where, frames[min(where, len(frames) - 1)])
        elif action == "empty":
            frames.insert(where, fleet_pb2.Frame())
        elif action == "header":
            frames.insert(where, fleet_pb2.Frame(header=header))
        else:
            frames.insert(where, fleet_pb2.Frame(data=draw(st.binary(max_size=32))))
    return frames


streams = st.one_of(st.sampled_from(_valid_streams()), forged_streams())


def _blob_variants(blob: bytes, rng: random.Random) -> list[bytes]:
    """`blob`, then byte-level mutations of it: truncated, flipped, re-declared, spliced."""
    variants = [blob]
    while len(variants) < VARIANTS:
        mutated = bytearray(blob)
        action = rng.randrange(5)
        if action == 0 and mutated:  # truncate
            del mutated[rng.randrange(len(mutated)) :]
        elif action == 1 and mutated:  # flip bytes
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        elif action == 2:  # declare another header length
            length = rng.choice([0, 1, 2**31, 2**63, U64, rng.getrandbits(64), len(blob) - 8])
            mutated[:8] = struct.pack("<Q", max(0, min(length, U64)))
        elif action == 3:  # splice in garbage
            at = rng.randrange(len(mutated) + 1)
            mutated[at:at] = rng.randbytes(rng.randint(1, 32))
        else:  # a JSON token replaced by a hostile one
            hostile = rng.choice([b"-1", b"1e999", b"NaN", b"[[[[[[", b'"\\ud800"', b"99" * 40])
            at = rng.randrange(len(mutated) + 1)
            mutated[at : at + len(hostile)] = hostile
        variants.append(bytes(mutated))
    return variants


def _stream_variants(
    frames: list[fleet_pb2.Frame], rng: random.Random
) -> list[list[fleet_pb2.Frame]]:
    """`frames`, then forgeries: truncated, re-declared sizes, damaged data, reordered."""
    variants = [frames]
    while len(variants) < VARIANTS:
        forged = [fleet_pb2.Frame.FromString(f.SerializeToString()) for f in frames]
        action = rng.randrange(4)
        if action == 0:  # truncated stream
            del forged[rng.randrange(len(forged) + 1) :]
        elif action == 1 and forged and forged[0].HasField("header"):  # lie about sizes
            header = forged[0].header
            field = rng.choice(["weights_bytes", "tensors_bytes", "num_examples", "server_round"])
            value = rng.choice([0, 1, 2**20, 2**20 + 1, 2**63, U64, rng.getrandbits(64)])
            setattr(header, field, value)
            if rng.random() < 0.3:
                header.schema = rng.choice([0, 2, 2**32 - 1])
        elif action == 2:  # damage a data frame
            data = [f for f in forged if f.HasField("data")]
            if data:
                frame = rng.choice(data)
                raw = bytearray(frame.data)
                if raw:
                    raw[rng.randrange(len(raw))] ^= 0xFF
                frame.data = bytes(raw[: rng.randint(0, len(raw))])
        elif forged:  # move a frame
            forged.insert(rng.randrange(len(forged)), forged.pop(rng.randrange(len(forged))))
        variants.append(forged)
    return variants


def _decode_blob(blob: bytes) -> bool:
    try:
        decode_weights(blob, max_bytes=LIMITS.max_message_bytes)
    except DecodeError:
        return False
    with contextlib.suppress(DecodeError, ShapeMismatch):
        decode_weights(blob, expected=MODEL.spec, max_bytes=LIMITS.max_message_bytes)
    return True


def _decode_result(frames: list[fleet_pb2.Frame]) -> bool:
    try:
        decode_result(iter(frames), limits=LIMITS, expected=None, source="client 'f'")
    except DecodeError:
        return False
    return True


def _decode_result_expected(frames: list[fleet_pb2.Frame]) -> bool:
    try:
        _, stream = peek_header(frames)
        decode_result(stream, limits=LIMITS, expected=MODEL.spec, source="client 'f'")
    except (DecodeError, ShapeMismatch):
        return False
    return True


def _decode_task(frames: list[fleet_pb2.Frame]) -> bool:
    try:
        decode_task(iter(frames), limits=LIMITS, expected=MODEL.spec)
    except (DecodeError, ShapeMismatch):
        return False
    return True


Variants = Callable[[Any, random.Random], list[Any]]
DECODERS: dict[str, tuple[st.SearchStrategy[Any], Variants, Callable[[Any], bool]]] = {
    "decode_weights": (blobs, _blob_variants, _decode_blob),
    "decode_result": (streams, _stream_variants, _decode_result),
    "decode_result_expected": (streams, _stream_variants, _decode_result_expected),
    "decode_task": (streams, _stream_variants, _decode_task),
}


def _fuzz(name: str, inputs: int) -> tuple[int, int]:
    """Run at least `inputs` inputs through decoder `name`: (inputs run, inputs that decoded).

    Hypothesis generates structures; each gives `VARIANTS` inputs (itself and seeded
    mutations of it), so most of the time goes to the decoder, not to generation.
    Structures come in batches of at most `BATCH`, a fresh Hypothesis run each, so its
    record of what it tried stays small. Only generation runs (no shrinking): a failure
    is reported with the structure and the seed of its mutations.
    """
    strategy, variants_of, decode = DECODERS[name]
    count = decoded = 0

    def run(value: Any, seed: int) -> None:
        nonlocal count, decoded
        for variant in variants_of(value, random.Random(seed)):
            count += 1
            decoded += decode(variant)

    remaining = -(-inputs // VARIANTS)
    while remaining > 0:
        batch = min(remaining, BATCH)
        settings(
            max_examples=batch,
            deadline=DEADLINE_MS,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given(strategy, st.integers(0, 2**32))(run))()
        remaining -= batch
    return count, decoded


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_fuzzed_input_raises_only_typed_errors(name: str) -> None:
    count, _ = _fuzz(name, QUICK_INPUTS)

    assert count >= QUICK_INPUTS


@pytest.mark.fuzz
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_fuzzed_input_raises_only_typed_errors_extended(name: str) -> None:
    """25,000 inputs per decoder, 100,000 in all: no crash, no hang, bounded memory."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()

    count, decoded = _fuzz(name, EXTENDED_INPUTS)

    elapsed = time.perf_counter() - start
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(
        f"\nfuzz {name}: {count} inputs ({decoded} decoded, {count - decoded} refused with "
        f"typed errors) in {elapsed:.1f} s, peak RSS grew {growth_mib:.0f} MiB"
    )
    assert count >= EXTENDED_INPUTS
    assert decoded > 0  # the generators reach past the first checks
    assert growth_mib < MAX_RSS_GROWTH_MIB
