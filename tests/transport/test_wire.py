"""The gRPC wire: tasks and results as chunked frame streams, and hostile streams."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedloom.core import (
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
    WeightsRes,
)
from fedloom.errors import ConfigError, DecodeError, ShapeMismatch
from fedloom.proto import fleet_pb2
from fedloom.transport.grpc import (
    CHUNK_BYTES,
    NO_TASK,
    STOP,
    WIRE_SCHEMA,
    Limits,
    decode_result,
    decode_task,
    encode_result,
    encode_signal,
    encode_task,
    peek_header,
    scalars_from_proto,
    scalars_to_proto,
)

Frames = list[fleet_pb2.Frame]
MiB = 1024 * 1024
SMALL = Limits(max_message_bytes=4096, max_header_bytes=4096, max_config_entries=8)
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def _weights(dtype: str = "float32") -> Weights:
    return Weights(
        {"w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=dtype), "b": np.array([0.5], dtype=dtype)}
    )


CONFIG = {"server_round": 3, "seed": -7, "lr": 0.125, "proximal": True, "name": "sgd"}
TENSORS = {"scaffold.c": np.array([0.25, -0.5, 1.0], dtype=np.float32)}


def _task_frames(task: Task, *, chunk_bytes: int = CHUNK_BYTES) -> Frames:
    return list(encode_task("t-1", task, session="s-1", chunk_bytes=chunk_bytes))


def _result_frames(reply: Reply) -> Frames:
    return list(encode_result("t-1", reply, session="s-1"))


def _header(**fields: object) -> fleet_pb2.Frame:
    return fleet_pb2.Frame(header=fleet_pb2.Header(schema=WIRE_SCHEMA, **fields))


def _decode_fit_result(frames: Frames, expected: VectorSpec | None = None) -> Reply:
    return decode_result(frames, expected=expected, source="client 'c1'", client_id="c1")[1]


def _assert_same_tensors(got: object, want: dict[str, np.ndarray]) -> None:
    assert isinstance(got, dict)
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype
        np.testing.assert_array_equal(got[name], value)


# --- round trips -----------------------------------------------------------------------------


def test_encode_task_fit_round_trips_weights_config_and_tensors() -> None:
    task = FitIns(weights=_weights(), config=CONFIG, tensors=TENSORS)

    task_id, got = decode_task(_task_frames(task), expected=task.weights.spec)

    assert task_id == "t-1"
    assert isinstance(got, FitIns)
    assert got.weights.equals(task.weights)
    assert dict(got.config) == CONFIG
    assert {k: type(v) for k, v in got.config.items()} == {k: type(v) for k, v in CONFIG.items()}
    _assert_same_tensors(got.tensors, TENSORS)


def test_encode_task_evaluate_and_get_weights_round_trip() -> None:
    evaluate = EvaluateIns(weights=_weights("float64"), config={"server_round": 1})
    get = GetWeightsIns(config={"seed": 0})

    _, got_evaluate = decode_task(_task_frames(evaluate))
    _, got_get = decode_task(_task_frames(get))

    assert isinstance(got_evaluate, EvaluateIns)
    assert got_evaluate.weights.equals(evaluate.weights)
    assert dict(got_evaluate.config) == {"server_round": 1}
    assert got_get == get


def test_encode_task_get_weights_has_no_data_frames() -> None:
    frames = _task_frames(GetWeightsIns())

    assert [f.WhichOneof("part") for f in frames] == ["header", "sha256"]
    assert frames[1].sha256 == hashlib.sha256(b"").digest()


def test_encode_result_fit_round_trips_weights_metrics_and_tensors() -> None:
    reply = FitRes(_weights(), 12, {"accuracy": 0.75, "steps": 3}, TENSORS)

    task_id, got = decode_result(
        _result_frames(reply), expected=_weights().spec, source="client 'c1'"
    )

    assert task_id == "t-1"
    assert isinstance(got, FitRes)
    assert isinstance(got.weights, Weights)
    assert got.weights.equals(_weights())
    assert (got.num_examples, dict(got.metrics)) == (12, {"accuracy": 0.75, "steps": 3})
    _assert_same_tensors(got.tensors, TENSORS)


def test_encode_result_converts_mapping_weights() -> None:
    reply = FitRes({"w": np.ones(3), "b": np.zeros(1)}, 1)

    got = _decode_fit_result(_result_frames(reply))

    assert isinstance(got, FitRes)
    assert isinstance(got.weights, Weights)
    assert got.weights.equals(Weights({"w": np.ones(3), "b": np.zeros(1)}))
    assert got.tensors == {}


def test_encode_result_evaluate_weights_and_failure_round_trip() -> None:
    evaluate = EvaluateRes(0.5, 10, {"accuracy": 0.9})
    weights = WeightsRes(weights=_weights())

    got_evaluate = _decode_fit_result(_result_frames(evaluate))
    got_weights = _decode_fit_result(_result_frames(weights))
    got_failure = _decode_fit_result(_result_frames(Failure(client_id="c1", reason="out of RAM")))

    assert got_evaluate == evaluate
    assert isinstance(got_weights, WeightsRes)
    assert isinstance(got_weights.weights, Weights)
    assert got_weights.weights.equals(_weights())
    assert got_failure == Failure(client_id="c1", reason="out of RAM")


def test_encode_result_rejects_unnamed_weights() -> None:
    with pytest.raises(ConfigError, match="carry no tensor names"):
        encode_result("t", WeightsRes(weights=[np.ones(2)]), session="s")


def test_encode_task_rejects_a_2d_plugin_tensor() -> None:
    task = FitIns(weights=_weights(), config={}, tensors={"p.x": np.ones((2, 2))})

    with pytest.raises(ConfigError, match=r"plug-in tensor 'p.x' has shape \(2, 2\)"):
        encode_task("t", task, session="s")


def test_encode_task_rejects_a_chunk_size_below_one() -> None:
    with pytest.raises(ConfigError, match="chunk_bytes must be a positive int, got 0"):
        encode_task("t", GetWeightsIns(), session="s", chunk_bytes=0)


def test_encode_signal_is_one_header_that_peek_header_reads() -> None:
    frames = list(encode_signal(STOP, session="s-1"))

    header, rest = peek_header(frames)

    assert len(frames) == 1
    assert (header.kind, header.session) == ("stop", "s-1")
    assert list(rest) == frames


def test_encode_signal_rejects_an_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="got 'nope'"):
        encode_signal("nope", session="s")


def test_decode_task_rejects_a_signal() -> None:
    with pytest.raises(DecodeError, match="is 'none': the stream is a signal"):
        decode_task(encode_signal(NO_TASK, session="s"))


def test_peek_header_rejects_a_stream_without_header() -> None:
    with pytest.raises(DecodeError, match="starts with a 'data' frame"):
        peek_header([fleet_pb2.Frame(data=b"x")])


# --- chunking --------------------------------------------------------------------------------


def test_encode_task_splits_10_mib_into_three_chunks() -> None:
    # 10 MiB of float64 values plus a ~100-byte blob header: 4 MiB + 4 MiB + (2 MiB + header).
    weights = Weights({"w": np.arange(10 * MiB // 8, dtype=np.float64)})

    frames = _task_frames(EvaluateIns(weights=weights, config={}), chunk_bytes=4 * MiB)

    data = [f.data for f in frames if f.WhichOneof("part") == "data"]
    assert len(data) == 3
    assert all(len(chunk) <= 4 * MiB for chunk in data)
    assert sum(map(len, data)) == frames[0].header.weights_bytes
    _, got = decode_task(frames)
    assert isinstance(got, EvaluateIns)
    assert got.weights.equals(weights)


# --- hostile streams -------------------------------------------------------------------------


def test_decode_task_rejects_a_huge_declared_size_before_allocating() -> None:
    frames = [_header(kind="fit", weights_bytes=10**15), fleet_pb2.Frame(data=b"x")]
    start = time.perf_counter()

    with pytest.raises(DecodeError, match=r"declare 1000000000000000 bytes.*max_message_bytes"):
        decode_task(frames)

    assert time.perf_counter() - start < 1.0


def test_decode_task_rejects_a_truncated_stream() -> None:
    frames = _task_frames(EvaluateIns(weights=_weights(), config={}), chunk_bytes=16)

    without_data = frames[:-2] + frames[-1:]
    without_checksum = frames[:-1]

    with pytest.raises(DecodeError, match=r"ended after \d+ of \d+ declared bytes \(truncated\)"):
        decode_task(without_data)
    with pytest.raises(DecodeError, match=r"'sha256' is missing.*\(truncated\)"):
        decode_task(without_checksum)


def test_decode_task_rejects_bytes_beyond_the_declared_size() -> None:
    frames = _task_frames(EvaluateIns(weights=_weights(), config={}))

    frames.insert(-1, fleet_pb2.Frame(data=b"\x00\x00"))

    with pytest.raises(DecodeError, match="field 'data' carries 2 bytes beyond"):
        decode_task(frames)


def test_decode_task_rejects_a_checksum_mismatch() -> None:
    frames = _task_frames(EvaluateIns(weights=_weights(), config={}))
    data = bytearray(frames[1].data)
    data[-1] ^= 0x01

    frames[1] = fleet_pb2.Frame(data=bytes(data))

    with pytest.raises(DecodeError, match="task stream field 'sha256' does not match"):
        decode_task(frames)


@pytest.mark.parametrize(
    ("frames", "phrase"),
    [
        ([], "stream is empty"),
        ([fleet_pb2.Frame(data=b"x")], "must come first, but frame 1 is a 'data' frame"),
        ([_header(kind="get_weights"), _header(kind="get_weights")], "must come only once"),
        ([_header(kind="get_weights"), fleet_pb2.Frame()], "the frame is empty"),
        ([_header(kind="fit", weights_bytes=1), fleet_pb2.Frame(data=b"")], "is empty"),
        (
            [
                _header(kind="get_weights"),
                fleet_pb2.Frame(sha256=hashlib.sha256(b"").digest()),
                fleet_pb2.Frame(data=b"x"),
            ],
            "must be the last frame",
        ),
    ],
)
def test_decode_task_rejects_frames_out_of_order(frames: Frames, phrase: str) -> None:
    with pytest.raises(DecodeError, match=phrase):
        decode_task(frames)


def test_decode_task_rejects_an_unknown_kind() -> None:
    with pytest.raises(DecodeError, match=r"field 'kind' is 'fitt'.*Did you mean 'fit'"):
        decode_task([_header(kind="fitt")])


def test_decode_task_rejects_another_schema() -> None:
    frames = _task_frames(GetWeightsIns())
    frames[0].header.schema = 2

    with pytest.raises(DecodeError, match="field 'schema' is 2; this fedloom reads wire schema 1"):
        decode_task(frames)


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"kind": "get_weights", "weights_bytes": 8}, "'weights_bytes' is 8.*carries no weights"),
        ({"kind": "fit"}, "'weights_bytes' is 0.*carries a weights blob"),
        ({"kind": "evaluate", "weights_bytes": 8, "tensors_bytes": 8}, "has no tensors"),
        ({"kind": "get_weights", "config": {"x": fleet_pb2.Scalar()}}, "'x' holds no value"),
        ({"kind": "get_weights", "error": "e" * 5000}, "over the limit max_header_bytes=4096"),
        (
            {"kind": "get_weights", "config": {str(i): fleet_pb2.Scalar(i=i) for i in range(9)}},
            "has 9 entries, over the limit max_config_entries=8",
        ),
    ],
)
def test_decode_task_rejects_a_header_that_breaks_the_contract(
    fields: dict[str, object], phrase: str
) -> None:
    frames = [_header(**fields), fleet_pb2.Frame(sha256=hashlib.sha256(b"").digest())]

    with pytest.raises(DecodeError, match=phrase):
        decode_task(frames, limits=SMALL)


def test_decode_result_rejects_a_non_finite_loss() -> None:
    frames = _result_frames(EvaluateRes(0.5, 1))
    frames[0].header.loss = float("nan")

    with pytest.raises(DecodeError, match="client 'c1': result stream field 'loss' is nan"):
        _decode_fit_result(frames)


def test_decode_result_names_client_and_tensor_on_a_wrong_shape() -> None:
    expected = Weights({"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}).spec

    with pytest.raises(ShapeMismatch, match=r"client 'c1' sent tensor 'b' with shape \(1,\)") as e:
        _decode_fit_result(_result_frames(FitRes(_weights(), 1)), expected)

    assert (e.value.client_id, e.value.tensor) == ("c1", "b")


def test_decode_result_rejects_a_blob_size_that_no_header_explains() -> None:
    # 8 MiB of float32 values cannot fit the expected 2-value model plus a 16 MiB header limit.
    big = Weights({"w": np.zeros(2 * MiB + 5 * MiB, np.float32)})
    expected = Weights({"w": np.zeros(2, np.float32)}).spec

    with pytest.raises(ShapeMismatch, match="client 'c1' declared a weights blob of"):
        _decode_fit_result(_result_frames(WeightsRes(weights=big)), expected)


def test_decode_task_names_the_server_on_a_wrong_shape() -> None:
    task = EvaluateIns(weights=_weights(), config={})
    expected = Weights({"w": np.zeros((2, 2), np.float64), "b": np.zeros(1)}).spec

    with pytest.raises(ShapeMismatch, match=r"the server sent tensor 'w'.*float32"):
        decode_task(_task_frames(task), expected=expected)


def test_decode_result_damaged_blob_names_the_client() -> None:
    frames = _result_frames(WeightsRes(weights=_weights()))
    data = bytearray(frames[1].data)
    data[:8] = (10**6).to_bytes(8, "little")  # a blob header length past the end
    frames[1] = fleet_pb2.Frame(data=bytes(data))
    frames[-1] = fleet_pb2.Frame(sha256=hashlib.sha256(bytes(data)).digest())

    with pytest.raises(DecodeError, match="client 'c1': weights blob field 'header length'") as e:
        _decode_fit_result(frames)

    assert e.value.client_id == "c1"


# --- scalars and limits ------------------------------------------------------------------------


scalars = st.dictionaries(
    st.text(max_size=8),
    st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=16),
    ),
    max_size=6,
)


@given(scalars)
def test_scalars_to_proto_round_trips_type_and_value(values: dict[str, object]) -> None:
    header = fleet_pb2.Header()

    scalars_to_proto(values, header.config)  # type: ignore[arg-type]
    got = scalars_from_proto(header.config)

    assert got == values
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in values.items()}


def test_scalars_to_proto_maps_bool_to_b_not_i() -> None:
    header = fleet_pb2.Header()

    scalars_to_proto({"flag": True, "count": 1}, header.config)

    assert header.config["flag"].WhichOneof("value") == "b"
    assert header.config["count"].WhichOneof("value") == "i"


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ([1, 2], r"config\['bad'\] is list"),
        (None, r"config\['bad'\] is NoneType"),
        (np.int64(3), r"config\['bad'\] is int64"),
        (2**63, "outside the int64 range"),
    ],
)
def test_scalars_to_proto_rejects_other_types(value: object, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase) as e:
        scalars_to_proto({"bad": value}, fleet_pb2.Header().config)  # type: ignore[dict-item]

    assert e.value.field == "bad"


def test_limits_rejects_a_negative_size() -> None:
    with pytest.raises(ConfigError, match=r"Limits\.max_message_bytes must be a non-negative int"):
        Limits(max_message_bytes=-1)


def test_import_fedloom_transport_grpc_without_grpc_names_the_extra() -> None:
    code = (
        "import sys\nsys.modules['grpc'] = None\n"
        "try:\n    import fedloom.transport.grpc\nexcept ImportError as exc:\n    print(exc)\n"
    )

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert "pip install 'fedloom[grpc]'" in out.stdout


# --- fuzzing ---------------------------------------------------------------------------------


_sizes = st.one_of(st.integers(0, 96), st.integers(0, 2**64 - 1))
_scalar_messages = st.one_of(
    st.just(fleet_pb2.Scalar()),
    st.builds(fleet_pb2.Scalar, b=st.booleans()),
    st.builds(fleet_pb2.Scalar, i=st.integers(-(2**63), 2**63 - 1)),
    st.builds(fleet_pb2.Scalar, f=st.floats()),
    st.builds(fleet_pb2.Scalar, s=st.text(max_size=8)),
)
_headers = st.builds(
    fleet_pb2.Header,
    schema=st.sampled_from([0, 1, 1, 1, 2, 2**32 - 1]),
    kind=st.sampled_from(
        ["fit", "evaluate", "get_weights", "weights", "failure", "none", "stop", "", "x"]
    ),
    config=st.dictionaries(st.text(max_size=4), _scalar_messages, max_size=10),
    metrics=st.dictionaries(st.text(max_size=4), _scalar_messages, max_size=10),
    weights_bytes=_sizes,
    tensors_bytes=_sizes,
    loss=st.floats(),
    num_examples=st.integers(0, 2**64 - 1),
)
_frames = st.lists(
    st.one_of(
        st.builds(fleet_pb2.Frame, header=_headers),
        st.builds(fleet_pb2.Frame, data=st.binary(max_size=64)),
        st.builds(fleet_pb2.Frame, sha256=st.binary(max_size=40)),
        st.just(fleet_pb2.Frame()),
    ),
    max_size=8,
)


def _decode_any(frames: Frames, expected: VectorSpec | None) -> None:
    with contextlib.suppress(DecodeError, ShapeMismatch):
        decode_task(frames, limits=SMALL, expected=expected)
    with contextlib.suppress(DecodeError, ShapeMismatch):
        decode_result(frames, limits=SMALL, expected=expected, source="client 'c1'")


@FUZZ
@given(_frames, st.booleans())
def test_decode_random_frames_raise_only_fedloom_errors(frames: Frames, check: bool) -> None:
    expected = _weights().spec if check else None

    _decode_any(frames, expected)


def _valid_streams() -> st.SearchStrategy[Frames]:
    tasks = [
        FitIns(weights=_weights(), config=CONFIG, tensors=TENSORS),
        EvaluateIns(weights=_weights(), config={}),
        GetWeightsIns(config={"a": 1}),
    ]
    replies = [
        FitRes(_weights(), 3, {"m": 1.0}, TENSORS),
        EvaluateRes(1.0, 2),
        Failure(client_id="c", reason="r"),
    ]
    streams = [list(encode_task("t", t, session="s", chunk_bytes=48)) for t in tasks]
    streams += [list(encode_result("t", r, session="s", chunk_bytes=48)) for r in replies]
    return st.sampled_from(streams)


def _mutate(frames: Frames, data: st.DataObject) -> Frames:
    """Drop, repeat, swap or damage frames; maybe re-sign the damage so the blob decoder sees it."""
    frames = [fleet_pb2.Frame.FromString(f.SerializeToString()) for f in frames]
    for _ in range(data.draw(st.integers(1, 3))):
        if not frames:
            break
        index = data.draw(st.integers(0, len(frames) - 1))
        action = data.draw(st.sampled_from(["drop", "dup", "swap", "size", "flip", "flip"]))
        chunks = [i for i, f in enumerate(frames) if f.WhichOneof("part") == "data"]
        if action == "drop":
            del frames[index]
        elif action == "dup":
            frames.insert(index, frames[index])
        elif action == "swap":
            other = data.draw(st.integers(0, len(frames) - 1))
            frames[index], frames[other] = frames[other], frames[index]
        elif action == "size":
            frames[0].header.weights_bytes = data.draw(_sizes)
        elif chunks:
            chunk = data.draw(st.sampled_from(chunks))
            raw = bytearray(frames[chunk].data)
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
            frames[chunk] = fleet_pb2.Frame(data=bytes(raw))
    if frames and data.draw(st.booleans()):
        payload = b"".join(f.data for f in frames if f.WhichOneof("part") == "data")
        frames[-1] = fleet_pb2.Frame(sha256=hashlib.sha256(payload).digest())
    return frames


@FUZZ
@given(_valid_streams(), st.data(), st.booleans())
def test_decode_mutated_streams_raise_only_fedloom_errors(
    frames: Frames, data: st.DataObject, check: bool
) -> None:
    expected = _weights().spec if check else None

    _decode_any(_mutate(frames, data), expected)


def test_decode_task_reads_a_stream_lazily() -> None:
    """The decoder pulls frames one at a time, as a gRPC stream delivers them."""
    pulled: list[int] = []

    def stream() -> Iterator[fleet_pb2.Frame]:
        for number, frame in enumerate(_task_frames(GetWeightsIns())):
            pulled.append(number)
            yield frame

    _, task = decode_task(stream())

    assert task == GetWeightsIns()
    assert pulled == [0, 1]
