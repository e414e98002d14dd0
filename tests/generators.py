"""Hypothesis strategies shared by the test suite: finite vectors, update stacks, weights, ids.

Every float strategy is bounded (``|x| <= bound``) and finite, so sums of a few
weighted rows stay far from overflow in float32 and tolerances stay meaningful.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import DTypeLike

__all__ = [
    "FAST",
    "FLOAT_DTYPES",
    "client_ids",
    "finite_floats",
    "finite_vectors",
    "positive_weights",
    "stacks",
    "stacks_with_weights",
]

FAST = settings(max_examples=50, deadline=None)
"""The settings for property tests in the quick suite."""

FLOAT_DTYPES: tuple[np.dtype[Any], ...] = (np.dtype(np.float32), np.dtype(np.float64))
"""The dtypes models are trained in; aggregators must preserve each."""

DEFAULT_BOUND = 1e3


def finite_floats(dtype: DTypeLike = np.float64, *, bound: float = DEFAULT_BOUND) -> Any:
    """Finite floats in ``[-bound, bound]`` that are exactly representable in `dtype`."""
    width = np.dtype(dtype).itemsize * 8
    return st.floats(
        min_value=-bound,
        max_value=bound,
        width=width,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
    )


def finite_vectors(dim: int, *, dtype: DTypeLike = np.float64, bound: float = DEFAULT_BOUND) -> Any:
    """1-D arrays of length `dim` and dtype `dtype` with finite values in ``[-bound, bound]``."""
    return arrays(np.dtype(dtype), (dim,), elements=finite_floats(dtype, bound=bound))


@st.composite
def stacks(
    draw: st.DrawFn,
    *,
    min_clients: int = 1,
    max_clients: int = 6,
    min_dim: int = 1,
    max_dim: int = 16,
    dtypes: tuple[np.dtype[Any], ...] = FLOAT_DTYPES,
    bound: float = DEFAULT_BOUND,
) -> Any:
    """A ``(k, d)`` stack of client updates: k clients, d coordinates, one float dtype."""
    dtype = draw(st.sampled_from(dtypes))
    k = draw(st.integers(min_clients, max_clients))
    d = draw(st.integers(min_dim, max_dim))
    return draw(arrays(dtype, (k, d), elements=finite_floats(dtype, bound=bound)))


def positive_weights(
    k: int, *, min_value: float = 1e-2, max_value: float = 1e3, integers: bool = False
) -> Any:
    """``(k,)`` float64 weights, all > 0; with `integers`, whole example counts."""
    if integers:
        elements: Any = st.integers(max(1, int(min_value)), int(max_value)).map(float)
    else:
        elements = st.floats(min_value=min_value, max_value=max_value)
    return arrays(np.float64, (k,), elements=elements)


@st.composite
def stacks_with_weights(draw: st.DrawFn, **stack_options: Any) -> Any:
    """A ``(k, d)`` stack and ``(k,)`` positive weights for it."""
    stack = draw(stacks(**stack_options))
    weights = draw(positive_weights(stack.shape[0]))
    return stack, weights


def client_ids(*, min_size: int = 0, max_size: int = 20) -> Any:
    """Lists of distinct client ids such as ``["c0", "c17", ...]``."""
    ids = st.integers(0, 999).map(lambda n: f"c{n}")
    return st.lists(ids, min_size=min_size, max_size=max_size, unique=True)
