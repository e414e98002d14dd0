"""Weights over one flat buffer, VectorSpec, and `conform` (checking a client's weights)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from fedloom.core import VectorSpec, Weights
from fedloom.core.weights import DeferredWeights
from fedloom.errors import ConfigError, InvalidResult, ShapeMismatch
from generators import FAST, finite_floats


def _model() -> Weights:
    # Layout: w (2, 2) at flat[0:4], then b (1,) at flat[4:5]; 5 float64 values in all.
    return Weights(
        {
            "w": np.array([[1.0, 2.0], [3.0, 4.0]]),
            "b": np.array([0.5]),
        }
    )


def _client_arrays() -> dict[str, np.ndarray]:
    # Same layout as _model(), other values: what a well-behaved client returns.
    return {"w": np.array([[5.0, 6.0], [7.0, 8.0]]), "b": np.array([-1.0])}


# --- layout and views ------------------------------------------------------------------


def test_weights_flat_concatenates_tensors_in_insertion_order() -> None:
    weights = _model()

    flat = weights.flat

    # w row-major (1, 2, 3, 4), then b (0.5).
    np.testing.assert_array_equal(flat, [1.0, 2.0, 3.0, 4.0, 0.5])
    assert list(weights) == ["w", "b"]
    assert weights.spec.names == ("w", "b")
    assert weights.spec.shapes == ((2, 2), (1,))


def test_weights_tensors_are_views_of_the_flat_buffer() -> None:
    weights = _model()

    tensors = [weights[name] for name in weights]

    for tensor in tensors:
        assert np.shares_memory(tensor, weights.flat)
    np.testing.assert_array_equal(weights["w"], [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(weights["b"], [0.5])


@pytest.mark.parametrize("target", ["flat", "w", "b"])
def test_weights_are_read_only(target: str) -> None:
    weights = _model()
    array = weights.flat if target == "flat" else weights[target]

    with pytest.raises(ValueError, match="read-only"):
        array[0] = 99.0

    np.testing.assert_array_equal(weights.flat, [1.0, 2.0, 3.0, 4.0, 0.5])


def test_weights_copy_their_input_arrays() -> None:
    source = {"w": np.array([1.0, 2.0, 3.0])}
    weights = Weights(source)

    source["w"][0] = 99.0

    np.testing.assert_array_equal(weights.flat, [1.0, 2.0, 3.0])


def test_weights_arrays_returns_writable_copies_in_order() -> None:
    weights = _model()

    arrays_out = weights.arrays()
    arrays_out[0][0, 0] = 99.0

    assert [a.shape for a in arrays_out] == [(2, 2), (1,)]
    assert weights["w"][0, 0] == 1.0


def test_weights_dtype_is_the_common_float_type() -> None:
    mixed = {"a": np.zeros(2, dtype=np.float32), "b": np.zeros(1, dtype=np.float64)}

    inferred = Weights(mixed)
    integers_only = Weights({"a": [1, 2]})
    explicit = Weights(mixed, dtype="float32")

    assert inferred.flat.dtype == np.float64
    assert integers_only.flat.dtype == np.float64
    assert explicit.flat.dtype == np.float32


def test_weights_nbytes_counts_the_flat_buffer() -> None:
    weights = Weights({"a": np.zeros((2, 3), dtype=np.float32)})

    nbytes = weights.nbytes

    # 2 * 3 values * 4 bytes each.
    assert nbytes == 24
    assert weights.spec.nbytes == 24


@FAST
@given(
    data=st.data(), shapes=st.lists(array_shapes(min_dims=0, max_dims=3, max_side=4), max_size=4)
)
def test_weights_from_flat_round_trips(data: st.DataObject, shapes: list[tuple[int, ...]]) -> None:
    tensors = {
        f"t{i}": data.draw(arrays(np.float64, shape, elements=finite_floats()))
        for i, shape in enumerate(shapes)
    }
    weights = Weights(tensors)

    rebuilt = Weights.from_flat(weights.spec, weights.flat)

    assert rebuilt.equals(weights)
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(rebuilt[name], tensor)


# --- from_flat -------------------------------------------------------------------------


def test_weights_from_flat_does_not_copy_when_dtype_matches() -> None:
    spec = _model().spec
    flat = np.arange(5, dtype=np.float64)

    weights = Weights.from_flat(spec, flat)

    assert np.shares_memory(weights.flat, flat)
    assert not weights.flat.flags.writeable


def test_weights_from_flat_converts_another_dtype() -> None:
    spec = _model().spec
    flat = np.arange(5, dtype=np.float32)

    weights = Weights.from_flat(spec, flat)

    assert weights.flat.dtype == np.float64
    assert not np.shares_memory(weights.flat, flat)
    np.testing.assert_array_equal(weights.flat, [0.0, 1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize(
    ("flat", "received"),
    [
        (np.zeros(4), r"\(4,\)"),
        (np.zeros(6), r"\(6,\)"),
        (np.zeros((1, 5)), r"\(1, 5\)"),
    ],
)
def test_weights_from_flat_rejects_a_vector_of_another_length(
    flat: np.ndarray, received: str
) -> None:
    spec = _model().spec

    with pytest.raises(ShapeMismatch, match=f"a flat vector of shape {received}") as info:
        Weights.from_flat(spec, flat)

    assert "which has 5 values in 2 tensors" in str(info.value)


# --- VectorSpec ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "complex128"])
def test_vector_spec_rejects_non_float_dtype(dtype: str) -> None:
    with pytest.raises(
        ConfigError, match=f"Weights hold floating-point tensors, got dtype {dtype}"
    ):
        VectorSpec(names=("w",), shapes=((2,),), dtype=dtype)


def test_vector_spec_rejects_names_and_shapes_of_different_lengths() -> None:
    with pytest.raises(ConfigError, match="VectorSpec has 2 names but 1 shapes"):
        VectorSpec(names=("w", "b"), shapes=((2,),), dtype="float32")


def test_vector_spec_rejects_duplicate_names() -> None:
    with pytest.raises(ConfigError, match=r"names must be unique, got \['w', 'w'\]"):
        VectorSpec(names=("w", "w"), shapes=((2,), (3,)), dtype="float32")


def test_vector_spec_sizes_count_elements_per_tensor() -> None:
    spec = VectorSpec(names=("w", "b", "s"), shapes=((2, 3), (3,), ()), dtype="float32")

    sizes, size, nbytes = spec.sizes, spec.size, spec.nbytes

    # (2, 3) -> 6, (3,) -> 3, a scalar () -> 1; 10 float32 values -> 40 bytes.
    assert sizes == (6, 3, 1)
    assert size == 10
    assert nbytes == 40


# --- conform: accepted forms -----------------------------------------------------------


def test_weights_conform_accepts_weights_with_the_same_layout() -> None:
    model = _model()
    returned = Weights(_client_arrays())

    conformed = model.conform(returned, client_id="c1")

    assert conformed.equals(returned)


def test_weights_conform_accepts_a_mapping_in_any_order() -> None:
    model = _model()
    reordered = dict(reversed(list(_client_arrays().items())))

    conformed = model.conform(reordered, client_id="c1")

    # The result takes the model's order: w (5, 6, 7, 8), then b (-1).
    assert conformed.spec == model.spec
    np.testing.assert_array_equal(conformed.flat, [5.0, 6.0, 7.0, 8.0, -1.0])


def test_weights_conform_accepts_a_list_in_model_order() -> None:
    model = _model()
    arrays_in_order = [_client_arrays()["w"], _client_arrays()["b"]]

    conformed = model.conform(arrays_in_order, client_id="c1")

    assert conformed.spec == model.spec
    np.testing.assert_array_equal(conformed.flat, [5.0, 6.0, 7.0, 8.0, -1.0])


def test_weights_conform_reads_a_list_in_model_order_not_by_shape() -> None:
    model = _model()
    swapped = [_client_arrays()["b"], _client_arrays()["w"]]

    with pytest.raises(ShapeMismatch, match=r"tensor 'w' with shape \(1,\)"):
        model.conform(swapped, client_id="c1")


# --- conform: rejected forms -----------------------------------------------------------


def test_weights_conform_rejects_a_missing_tensor() -> None:
    model = _model()
    returned = {"w": _client_arrays()["w"]}

    with pytest.raises(ShapeMismatch, match=r"missing \['b'\], unexpected \[\]") as info:
        model.conform(returned, client_id="c1")

    assert "client 'c1'" in str(info.value)
    assert info.value.client_id == "c1"
    assert info.value.tensor == "b"


def test_weights_conform_rejects_an_extra_tensor() -> None:
    model = _model()
    returned = {**_client_arrays(), "extra": np.zeros(3)}

    with pytest.raises(ShapeMismatch, match=r"missing \[\], unexpected \['extra'\]") as info:
        model.conform(returned, client_id="c1")

    assert info.value.tensor == "extra"


def test_weights_conform_rejects_a_list_of_another_length() -> None:
    model = _model()
    returned = [_client_arrays()["w"]]

    with pytest.raises(
        ShapeMismatch,
        match=r"client 'c1' returned 1 arrays; the global model has 2 tensors \(w, b\)",
    ):
        model.conform(returned, client_id="c1")


def test_weights_conform_rejects_a_wrong_shape_naming_client_tensor_and_shapes() -> None:
    model = _model()
    returned = {**_client_arrays(), "w": np.zeros(3)}

    with pytest.raises(
        ShapeMismatch,
        match=(
            r"client 'c7' returned tensor 'w' with shape \(3,\) float64; "
            r"expected \(2, 2\) float64"
        ),
    ) as info:
        model.conform(returned, client_id="c7")

    assert info.value.client_id == "c7"
    assert info.value.tensor == "w"


def test_weights_conform_rejects_a_wrong_dtype() -> None:
    model = _model()
    returned = {**_client_arrays(), "b": np.array([-1.0], dtype=np.float32)}

    with pytest.raises(
        ShapeMismatch, match=r"tensor 'b' with shape \(1,\) float32; expected \(1,\) float64"
    ):
        model.conform(returned, client_id="c1")


def test_weights_conform_rejects_weights_of_another_dtype() -> None:
    model = _model()
    returned = Weights(_client_arrays(), dtype="float32")

    with pytest.raises(ShapeMismatch, match=r"tensor 'w' with shape \(2, 2\) float32"):
        model.conform(returned, client_id="c1")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("form", ["mapping", "weights"])
def test_weights_conform_rejects_non_finite_values(bad: float, form: str) -> None:
    model = _model()
    arrays_in = {**_client_arrays(), "b": np.array([bad])}
    returned: Mapping[str, np.ndarray] = Weights(arrays_in) if form == "weights" else arrays_in

    with pytest.raises(
        InvalidResult, match="client 'c2' returned tensor 'b' with 1 NaN or Inf values"
    ) as info:
        model.conform(returned, client_id="c2")

    assert not isinstance(info.value, ShapeMismatch)
    assert info.value.client_id == "c2"
    assert info.value.tensor == "b"


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(3.0, "float"), ("w", "str"), (None, "NoneType"), (np.zeros(5), "ndarray")],
)
def test_weights_conform_rejects_another_type(value: object, type_name: str) -> None:
    model = _model()

    with pytest.raises(
        InvalidResult, match=f"client 'c1' returned weights of type {type_name}; expected"
    ) as info:
        model.conform(value, client_id="c1")  # type: ignore[arg-type]

    assert not isinstance(info.value, ShapeMismatch)


# --- equals and repr -------------------------------------------------------------------


def test_weights_equals_compares_layout_and_values() -> None:
    model = _model()
    same = _model()
    other_values = Weights({"w": np.zeros((2, 2)), "b": np.array([0.5])})
    other_dtype = Weights(dict(model), dtype="float32")
    other_names = Weights({"v": model["w"], "b": model["b"]})

    assert model.equals(same)
    assert not model.equals(other_values)
    assert not model.equals(other_dtype)
    assert not model.equals(other_names)


def test_weights_repr_shows_names_shapes_and_dtype() -> None:
    weights = Weights({"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)})

    text = repr(weights)

    assert text == "Weights({w: shape (2, 3) float32, b: shape (3,) float32})"


class _Block:
    """A DeferredRows over a plain array, counting how often its rows were computed."""

    def __init__(self, rows: np.ndarray, *, proven: bool) -> None:
        self._rows = rows
        self.proven = proven
        self.computed = 0

    def rows(self) -> np.ndarray:
        self.computed += 1
        return self._rows

    def finite(self, row: int) -> bool:
        return self.proven

    def weighted_difference(
        self, rows: Sequence[int], scales: Sequence[float], base: np.ndarray
    ) -> np.ndarray:
        return np.asarray(
            sum(s * (self._rows[r] - base) for r, s in zip(rows, scales, strict=True)),
            dtype=self._rows.dtype,
        )


_SPEC = VectorSpec(names=("w", "b"), shapes=((2, 2), (1,)), dtype="float32")


def test_deferred_weights_compute_their_row_when_read_and_then_drop_the_block() -> None:
    block = _Block(np.arange(10, dtype=np.float32).reshape(2, 5), proven=True)
    weights = DeferredWeights(_SPEC, block, 1)

    assert list(weights) == ["w", "b"]
    assert weights.nbytes == 20
    assert block.computed == 0
    assert weights.pending == (block, 1)
    assert weights["w"].tolist() == [[5.0, 6.0], [7.0, 8.0]]
    assert weights.flat.tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert not weights.flat.flags.writeable
    assert weights.pending is None
    assert block.computed == 1
    assert weights.equals(Weights.from_flat(_SPEC, np.arange(5, 10, dtype=np.float32)))


def test_conform_trusts_a_block_that_proves_its_row_finite_without_computing_it() -> None:
    block = _Block(np.zeros((1, 5), dtype=np.float32), proven=True)
    model = Weights.from_flat(_SPEC, np.zeros(5, dtype=np.float32))

    checked = model.conform(DeferredWeights(_SPEC, block, 0), client_id="c")

    assert block.computed == 0
    assert isinstance(checked, DeferredWeights)


def test_conform_computes_and_rejects_a_deferred_row_that_is_not_proven_finite() -> None:
    rows = np.zeros((2, 5), dtype=np.float32)
    rows[1, 4] = np.inf
    block = _Block(rows, proven=False)
    model = Weights.from_flat(_SPEC, np.zeros(5, dtype=np.float32))

    model.conform(DeferredWeights(_SPEC, block, 0), client_id="a")  # finite: accepted
    with pytest.raises(InvalidResult, match="client 'b' returned tensor 'b' with 1 NaN or Inf"):
        model.conform(DeferredWeights(_SPEC, block, 1), client_id="b")
    assert block.computed == 2
