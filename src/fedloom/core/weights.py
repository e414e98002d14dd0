"""Model weights as an ordered map of named tensors over one flat vector.

`Weights` stores every tensor in a single contiguous 1-D buffer; each named
tensor is a reshaped view into it. Strategies and aggregators work on that flat
vector (``weights.flat``) without copying, while clients see named arrays.
A `VectorSpec` describes the layout (names, shapes, dtype) and is what a
result is checked against.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedloom.errors import ConfigError, InvalidResult, ShapeMismatch

__all__ = ["DeferredRows", "DeferredWeights", "Vector", "VectorSpec", "Weights", "WeightsLike"]

Vector: TypeAlias = NDArray[np.floating]
"""A 1-D float array: the only thing strategies and aggregators see."""


@dataclass(frozen=True, slots=True)
class VectorSpec:
    """Layout of a `Weights`: tensor names in order, their shapes, and the shared dtype."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: str
    _sizes: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise ConfigError(
                f"VectorSpec has {len(self.names)} names but {len(self.shapes)} shapes; "
                "pass one shape per tensor name."
            )
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"VectorSpec tensor names must be unique, got {list(self.names)}.")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError as exc:
            raise ConfigError(
                f"VectorSpec dtype {self.dtype!r} is not a numpy dtype; use e.g. 'float32'."
            ) from exc
        if not np.issubdtype(dtype, np.floating):
            raise ConfigError(
                f"Weights hold floating-point tensors, got dtype {self.dtype}. "
                "Cast the tensors to a float dtype, or keep integer state (such as counters) "
                "out of the federated weights."
            )
        # read for every result a server checks and folds: counted once
        object.__setattr__(self, "_sizes", tuple(math.prod(shape) for shape in self.shapes))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each tensor, in order."""
        return self._sizes

    @property
    def size(self) -> int:
        """Total number of elements: the length of the flat vector."""
        return sum(self._sizes)

    @property
    def nbytes(self) -> int:
        """Bytes of the flat vector."""
        return self.size * np.dtype(self.dtype).itemsize

    def describe(self, name: str) -> str:
        """``shape (3, 4) float32`` for the tensor `name`."""
        shape = self.shapes[self.names.index(name)]
        return f"shape {shape} {self.dtype}"


WeightsLike: TypeAlias = "Weights | Mapping[str, ArrayLike] | Sequence[ArrayLike]"
"""What a client may return: `Weights`, a name -> array mapping, or arrays in spec order."""


class Weights(Mapping[str, NDArray[np.floating]]):
    """An immutable, ordered mapping of tensor name -> array over one flat buffer.

    Example:
        >>> w = Weights({"w": [[1.0, 2.0]], "b": [0.5]})
        >>> w.flat
        array([1. , 2. , 0.5])
        >>> w["w"].shape
        (1, 2)
    """

    __slots__ = ("_flat", "_spec", "_views")

    def __init__(self, arrays: Mapping[str, ArrayLike], *, dtype: str | None = None) -> None:
        """Copy `arrays` into one contiguous buffer.

        Args:
            arrays: tensors by name, in order.
            dtype: the buffer's dtype; by default the common float type of the tensors.
        """
        converted = {name: np.asarray(value) for name, value in arrays.items()}
        if dtype is None:
            kinds = [a.dtype for a in converted.values() if np.issubdtype(a.dtype, np.floating)]
            dtype = str(np.result_type(*kinds)) if kinds else "float64"
        spec = VectorSpec(
            names=tuple(converted),
            shapes=tuple(tuple(int(n) for n in a.shape) for a in converted.values()),
            dtype=dtype,
        )
        flat = np.empty(spec.size, dtype=spec.dtype)
        offset = 0
        for array, size in zip(converted.values(), spec.sizes, strict=True):
            flat[offset : offset + size] = array.reshape(-1)
            offset += size
        self._init(spec, flat)

    @classmethod
    def from_flat(cls, spec: VectorSpec, flat: ArrayLike) -> Weights:
        """Wrap a flat vector laid out as `spec`, without copying when the dtype matches."""
        vector = np.ascontiguousarray(flat, dtype=spec.dtype)
        if vector.ndim != 1 or vector.size != spec.size:
            raise ShapeMismatch(
                f"a flat vector of shape {vector.shape} does not fit the model, which has "
                f"{spec.size} values in {len(spec.names)} tensors. Check that both sides build "
                "the same model."
            )
        weights = cls.__new__(cls)
        weights._init(spec, vector)
        return weights

    def _init(self, spec: VectorSpec, flat: NDArray[np.floating]) -> None:
        view = flat.view()
        view.setflags(write=False)
        self._spec = spec
        self._flat = view
        self._views: dict[str, NDArray[np.floating]] = {}
        offset = 0
        for name, shape, size in zip(spec.names, spec.shapes, spec.sizes, strict=True):
            self._views[name] = view[offset : offset + size].reshape(shape)
            offset += size

    @property
    def spec(self) -> VectorSpec:
        """The layout of these weights."""
        return self._spec

    @property
    def flat(self) -> Vector:
        """The read-only flat vector that every tensor is a view of."""
        return self._flat

    @property
    def nbytes(self) -> int:
        """Bytes of the flat buffer."""
        return int(self._flat.nbytes)

    def __getitem__(self, name: str) -> NDArray[np.floating]:
        return self._views[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._spec.names)

    def __len__(self) -> int:
        return len(self._spec.names)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {self._spec.describe(n)}" for n in self._spec.names)
        return f"Weights({{{parts}}})"

    def arrays(self) -> list[NDArray[np.floating]]:
        """The tensors in spec order, as writable copies (for loading into a model)."""
        return [self._views[name].copy() for name in self._spec.names]

    def equals(self, other: Weights) -> bool:
        """True when `other` has the same layout and equal values (NaN never equals)."""
        return self._spec == other.spec and bool(np.array_equal(self.flat, other.flat))

    def conform(self, value: WeightsLike, *, client_id: str) -> Weights:
        """Check that `value` has exactly this layout and finite values, and return it as Weights.

        Raises:
            ShapeMismatch: a tensor is missing, extra, or has another shape or dtype.
            InvalidResult: the value is of another type or holds NaN or Inf.
        """
        spec = self._spec
        if isinstance(value, Weights):
            if value.spec == spec:
                return _require_finite(value, client_id)
            arrays: Mapping[str, object] = dict(value)
        elif isinstance(value, Mapping):
            arrays = value
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
            if len(value) != len(spec.names):
                raise ShapeMismatch(
                    f"client '{client_id}' returned {len(value)} arrays; the global model has "
                    f"{len(spec.names)} tensors ({', '.join(spec.names)}). Is it running the "
                    "same model?",
                    client_id=client_id,
                )
            arrays = dict(zip(spec.names, value, strict=True))
        else:
            raise InvalidResult(
                f"client '{client_id}' returned weights of type {type(value).__name__}; expected "
                "Weights, a mapping of tensor name -> array, or a list of arrays in model order.",
                client_id=client_id,
            )
        missing = [n for n in spec.names if n not in arrays]
        extra = [str(n) for n in arrays if n not in spec.names]
        if missing or extra:
            raise ShapeMismatch(
                f"client '{client_id}' returned tensors that differ from the global model: "
                f"missing {missing}, unexpected {extra}. Is it running the same model?",
                client_id=client_id,
                tensor=(missing or extra)[0],
            )
        flat = np.empty(spec.size, dtype=spec.dtype)
        offset = 0
        for name, shape, size in zip(spec.names, spec.shapes, spec.sizes, strict=True):
            array = np.asarray(arrays[name])
            if array.shape != shape or array.dtype != np.dtype(spec.dtype):
                raise ShapeMismatch(
                    f"client '{client_id}' returned tensor '{name}' with shape "
                    f"{tuple(array.shape)} {array.dtype}; expected {shape} {spec.dtype}. "
                    "Is it running the same model?",
                    client_id=client_id,
                    tensor=name,
                )
            flat[offset : offset + size] = array.reshape(-1)
            offset += size
        return _require_finite(Weights.from_flat(spec, flat), client_id)


class DeferredRows(Protocol):
    """Many results' weights kept in a compact form (e.g. factors), computed only when read.

    Row ``i`` is the flat vector of one result. An engine that trains many
    clients at once can hand out `DeferredWeights` over such a block: a server
    that only checks and averages the results (FedAvg) then asks the block for
    the weighted sum at once (`weighted_difference`) and never writes the rows
    one by one; anything that reads a result's values gets them computed.
    """

    def rows(self) -> NDArray[np.floating]:
        """Every row, ``[count, size]``, computed on the first call (later calls return it)."""
        ...

    def finite(self, row: int) -> bool:
        """True when row `row` is proven to hold only finite values without computing it.

        False means "not proven": the caller computes the row and checks it.
        """
        ...

    def weighted_difference(
        self, rows: Sequence[int], scales: Sequence[float], base: Vector
    ) -> Vector:
        """``sum_i scales[i] * (row(rows[i]) - base)``, a new vector of the rows' dtype."""
        ...


class DeferredWeights(Weights):
    """Row `row` of a `DeferredRows` block, as `Weights` whose values are computed when read.

    Reading anything that holds values (``flat``, a tensor, `arrays`, `equals`)
    computes the whole block once and views its row; the layout (`spec`, names,
    ``len``) is known before. `pending` is the block and row while nothing was
    read, which lets a streaming mean fold the block at once.

    Args:
        spec: the layout of every row.
        block: the rows.
        row: which row these weights are.
    """

    __slots__ = ("_block", "_row")

    def __init__(self, spec: VectorSpec, block: DeferredRows, row: int) -> None:
        self._spec = spec
        self._block: DeferredRows | None = block
        self._row = row

    @property
    def pending(self) -> tuple[DeferredRows, int] | None:
        """``(block, row)`` while the values were not computed yet, else None."""
        return None if self._block is None else (self._block, self._row)

    def _compute(self) -> None:
        block = self._block
        if block is not None:
            rows = block.rows()
            if rows.shape[1:] != (self._spec.size,) or np.dtype(rows.dtype) != np.dtype(
                self._spec.dtype
            ):
                raise ShapeMismatch(
                    f"a deferred block of rows {rows.shape[1:]} {rows.dtype} does not fit the "
                    f"layout of its weights ({self._spec.size} values, {self._spec.dtype})."
                )
            self._init(self._spec, rows[self._row])
            self._block = None  # the values are here now: the block may go

    @property
    def flat(self) -> Vector:
        """The read-only flat vector, computed on first access."""
        self._compute()
        return self._flat

    @property
    def nbytes(self) -> int:
        """Bytes of the flat buffer."""
        return self._spec.nbytes

    def __getitem__(self, name: str) -> NDArray[np.floating]:
        self._compute()
        return self._views[name]

    def arrays(self) -> list[NDArray[np.floating]]:
        """The tensors in spec order, as writable copies (for loading into a model)."""
        self._compute()
        return super().arrays()

    def equals(self, other: Weights) -> bool:
        """True when `other` has the same layout and equal values (NaN never equals)."""
        self._compute()
        return super().equals(other)


def _require_finite(weights: Weights, client_id: str) -> Weights:
    pending = weights.pending if isinstance(weights, DeferredWeights) else None
    if pending is not None and pending[0].finite(pending[1]):
        return weights  # proven finite without computing the values
    flat = weights.flat
    step = 1 << 20  # a chunk at a time: no model-sized boolean array
    if all(np.isfinite(flat[i : i + step]).all() for i in range(0, flat.size, step)):
        return weights
    for name in weights:
        bad = ~np.isfinite(weights[name])
        if bad.any():
            raise InvalidResult(
                f"client '{client_id}' returned tensor '{name}' with {int(bad.sum())} NaN or "
                "Inf values; expected finite numbers. Lower its learning rate or check its data.",
                client_id=client_id,
                tensor=name,
            )
    raise AssertionError("unreachable: a non-finite value belongs to some tensor")
