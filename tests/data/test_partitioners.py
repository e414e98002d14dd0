"""Tests for fedloom.data.partitioners: IID, Dirichlet, Shards and ByKey splits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from fedloom.core import ClientContext
from fedloom.data import IID, PARTITIONERS, ByKey, Dirichlet, Shards
from fedloom.errors import ConfigError

FAST = settings(max_examples=50, deadline=None)

# (labels, num_partitions) for a partitioner; a draw function per partitioner.
Case = tuple[NDArray[np.int64], int]


@st.composite
def label_arrays(draw: st.DrawFn, *, min_size: int = 1, max_size: int = 200) -> Any:
    """1-D int64 labels with up to 10 classes."""
    values = draw(
        st.lists(st.integers(0, 9), min_size=min_size, max_size=max_size),
    )
    return np.asarray(values, dtype=np.int64)


@st.composite
def iid_cases(draw: st.DrawFn) -> Case:
    labels = draw(label_arrays())
    return labels, draw(st.integers(1, min(labels.size, 20)))


@st.composite
def shards_cases(draw: st.DrawFn, shards_per_client: int = 2) -> Case:
    labels = draw(label_arrays(min_size=shards_per_client))
    return labels, draw(st.integers(1, min(labels.size // shards_per_client, 20)))


@st.composite
def by_key_cases(draw: st.DrawFn) -> Case:
    labels = draw(label_arrays())
    return labels, np.unique(labels).size


def assert_valid_split(parts: list[NDArray[np.int64]], num_samples: int, num_parts: int) -> None:
    """Right count, int64, ascending, disjoint, and together every index once."""
    assert len(parts) == num_parts
    for part in parts:
        assert part.dtype == np.int64
        assert part.ndim == 1
        assert np.all(np.diff(part) > 0)
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(num_samples))


def distinct_labels_per_partition(labels: NDArray[Any], parts: list[NDArray[np.int64]]) -> float:
    return float(np.mean([np.unique(labels[part]).size for part in parts if part.size]))


SPLIT_CASES: list[tuple[Any, Callable[[], st.SearchStrategy[Case]]]] = [
    (IID(), iid_cases),
    (Dirichlet(alpha=0.5), iid_cases),
    (Dirichlet(alpha=0.05), iid_cases),
    (Shards(shards_per_client=2), shards_cases),
    (ByKey(), by_key_cases),
]
SPLIT_IDS = ["iid", "dirichlet", "dirichlet_small_alpha", "shards", "by_key"]


# --- properties shared by every partitioner --------------------------------------------


@pytest.mark.parametrize(("partitioner", "cases"), SPLIT_CASES, ids=SPLIT_IDS)
def test_partitioner_split_is_disjoint_complete_sorted_int64(partitioner: Any, cases: Any) -> None:
    @FAST
    @given(case=cases(), seed=st.integers(0, 2**32 - 1))
    def check(case: Case, seed: int) -> None:
        labels, num_partitions = case

        parts = partitioner.split(labels, num_partitions, seed=seed)

        assert_valid_split(parts, labels.size, num_partitions)

    check()


@pytest.mark.parametrize(("partitioner", "cases"), SPLIT_CASES, ids=SPLIT_IDS)
def test_partitioner_same_seed_gives_identical_split(partitioner: Any, cases: Any) -> None:
    @FAST
    @given(case=cases(), seed=st.integers(0, 2**32 - 1))
    def check(case: Case, seed: int) -> None:
        labels, num_partitions = case

        first = partitioner.split(labels, num_partitions, seed=seed)
        second = partitioner.split(labels.copy(), num_partitions, seed=seed)

        assert len(first) == len(second)
        assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))

    check()


@pytest.mark.parametrize(("partitioner", "cases"), SPLIT_CASES, ids=SPLIT_IDS)
def test_partitioner_does_not_modify_labels(partitioner: Any, cases: Any) -> None:
    @FAST
    @given(case=cases())
    def check(case: Case) -> None:
        labels, num_partitions = case
        before = labels.copy()

        partitioner.split(labels, num_partitions, seed=0)

        assert np.array_equal(labels, before)

    check()


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_partitioners_table_maps_names_to_classes(name: str) -> None:
    kwargs: dict[str, Any] = {"alpha": 1.0} if name == "dirichlet" else {}

    partitioner = PARTITIONERS[name](**kwargs)

    parts = partitioner.split(["a", "b", "a", "b"], 2, seed=0)
    assert_valid_split(parts, 4, 2)


def test_partitioner_accepts_lists_and_string_labels() -> None:
    labels = ["cat", "dog", "cat", "bird", "dog", "bird"]

    for partitioner in (IID(), Dirichlet(alpha=1.0), Shards(shards_per_client=1)):
        assert_valid_split(partitioner.split(labels, 3, seed=1), 6, 3)


def test_partitioner_works_through_client_context() -> None:
    labels = np.arange(10) % 2
    context = ClientContext(client_id="1", partition_id=1, num_partitions=3, partitioner=IID())

    part = context.partition(labels)

    assert np.array_equal(part, IID().split(labels, 3, seed=0)[1])


# --- IID ---------------------------------------------------------------------------------


@FAST
@given(case=iid_cases(), seed=st.integers(0, 2**32 - 1))
def test_iid_sizes_differ_by_at_most_one(case: Case, seed: int) -> None:
    labels, num_partitions = case

    sizes = [part.size for part in IID().split(labels, num_partitions, seed=seed)]

    assert max(sizes) - min(sizes) <= 1


def test_iid_gives_the_extra_samples_to_the_first_partitions() -> None:
    # 10 samples over 3 partitions: 10 = 3 * 3 + 1, so the first gets 4.
    sizes = [part.size for part in IID().split(np.zeros(10), 3, seed=0)]

    assert sizes == [4, 3, 3]


def test_iid_different_seeds_give_different_splits() -> None:
    labels = np.zeros(100)

    first = IID().split(labels, 4, seed=0)
    second = IID().split(labels, 4, seed=1)

    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_iid_rejects_more_partitions_than_samples() -> None:
    with pytest.raises(ConfigError, match=r"cannot split 3 samples into num_partitions=5") as info:
        IID().split([0, 1, 2], 5, seed=0)

    assert info.value.field == "num_partitions"
    assert info.value.value == 5


# --- Dirichlet ---------------------------------------------------------------------------


def test_dirichlet_small_alpha_gives_more_label_skew_than_large_alpha() -> None:
    """Mean distinct classes per client is ~1-2 for alpha=0.05 and all 10 for alpha=100."""
    labels = np.repeat(np.arange(10), 100)  # 10 classes x 100 samples

    for seed in range(3):
        skewed = Dirichlet(alpha=0.05).split(labels, 10, seed=seed)
        uniform = Dirichlet(alpha=100.0).split(labels, 10, seed=seed)

        assert distinct_labels_per_partition(labels, skewed) < 5
        assert distinct_labels_per_partition(labels, uniform) > 9


@FAST
@given(
    labels=label_arrays(min_size=100, max_size=300),
    num_partitions=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_respects_min_size(
    labels: NDArray[np.int64], num_partitions: int, seed: int
) -> None:
    parts = Dirichlet(alpha=1.0, min_size=5).split(labels, num_partitions, seed=seed)

    assert_valid_split(parts, labels.size, num_partitions)
    assert min(part.size for part in parts) >= 5


def test_dirichlet_raises_when_min_size_is_never_met() -> None:
    # One class and a tiny alpha put (nearly) every sample in one partition each draw.
    labels = np.zeros(100, dtype=np.int64)

    with pytest.raises(ConfigError, match=r"in 100 attempts.*Lower min_size, raise alpha") as info:
        Dirichlet(alpha=0.001, min_size=10).split(labels, 5, seed=0)

    assert info.value.field == "min_size"


def test_dirichlet_rejects_impossible_min_size() -> None:
    # 4 partitions x 10 samples each need 40 samples; there are 30.
    with pytest.raises(ConfigError, match=r"needs at least num_partitions \* min_size = 40"):
        Dirichlet(alpha=1.0, min_size=10).split(np.zeros(30), 4, seed=0)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf"), "1", True])
def test_dirichlet_rejects_non_positive_alpha(alpha: Any) -> None:
    with pytest.raises(ConfigError, match=r"alpha must be a finite number > 0") as info:
        Dirichlet(alpha=alpha)

    assert info.value.field == "alpha"


@pytest.mark.parametrize("min_size", [-1, 1.5])
def test_dirichlet_rejects_bad_min_size(min_size: Any) -> None:
    with pytest.raises(ConfigError, match=r"min_size must be an integer >= 0") as info:
        Dirichlet(alpha=1.0, min_size=min_size)

    assert info.value.field == "min_size"


# --- Shards ------------------------------------------------------------------------------


def test_shards_aligned_classes_give_each_client_at_most_two_labels() -> None:
    # 10 classes x 20 samples, 10 clients x 2 shards = 20 shards of 10: one class per shard.
    labels = np.repeat(np.arange(10), 20)

    for seed in range(5):
        parts = Shards(shards_per_client=2).split(labels, 10, seed=seed)

        assert all(np.unique(labels[part]).size <= 2 for part in parts)
        assert all(part.size == 20 for part in parts)


@FAST
@given(case=shards_cases(shards_per_client=3), seed=st.integers(0, 2**32 - 1))
def test_shards_sizes_differ_by_at_most_shards_per_client(case: Case, seed: int) -> None:
    """Shard sizes differ by at most 1, so partition sizes by at most shards_per_client."""
    labels, num_partitions = case

    sizes = [
        part.size for part in Shards(shards_per_client=3).split(labels, num_partitions, seed=seed)
    ]

    assert max(sizes) - min(sizes) <= 3


def test_shards_rejects_too_few_samples_for_the_shards() -> None:
    with pytest.raises(ConfigError, match=r"= 3 \* 2 = 6 non-empty shards.*only 5 samples") as info:
        Shards(shards_per_client=2).split(np.arange(5), 3, seed=0)

    assert info.value.field == "shards_per_client"


@pytest.mark.parametrize("shards_per_client", [0, -2, 1.0])
def test_shards_rejects_bad_shards_per_client(shards_per_client: Any) -> None:
    with pytest.raises(ConfigError, match=r"shards_per_client must be an integer >= 1"):
        Shards(shards_per_client=shards_per_client)


# --- ByKey -------------------------------------------------------------------------------


def test_by_key_returns_one_group_per_key_in_sorted_key_order() -> None:
    labels = np.array(["b", "a", "b", "c", "a"])

    keys = ByKey().keys(labels)
    parts = ByKey().split(labels, 3, seed=0)

    assert keys.tolist() == ["a", "b", "c"]
    assert [part.tolist() for part in parts] == [[1, 4], [0, 2], [3]]


@FAST
@given(case=by_key_cases())
def test_by_key_partition_holds_exactly_its_key(case: Case) -> None:
    labels, num_partitions = case

    keys = ByKey().keys(labels)
    parts = ByKey().split(labels, num_partitions, seed=0)

    for key, part in zip(keys, parts, strict=True):
        assert np.array_equal(part, np.flatnonzero(labels == key))


def test_by_key_ignores_seed() -> None:
    labels = [3, 1, 3, 2]

    first = ByKey().split(labels, 3, seed=0)
    second = ByKey().split(labels, 3, seed=99)

    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_by_key_rejects_num_partitions_other_than_key_count() -> None:
    with pytest.raises(ConfigError, match=r"3 distinct keys, but num_partitions=2") as info:
        ByKey().split(["x", "y", "z"], 2, seed=0)

    assert info.value.field == "num_partitions"


def test_by_key_rejects_incomparable_keys() -> None:
    labels = np.array([1, "a", None], dtype=object)

    with pytest.raises(ConfigError, match=r"labels must be mutually comparable"):
        ByKey().keys(labels)


# --- shared input validation -------------------------------------------------------------

ALL_PARTITIONERS = [IID(), Dirichlet(alpha=1.0), Shards(), ByKey()]
ALL_IDS = ["iid", "dirichlet", "shards", "by_key"]


@pytest.mark.parametrize(
    "partitioner", ALL_PARTITIONERS, ids=["iid", "dirichlet", "shards", "by_key"]
)
def test_partitioner_rejects_labels_that_are_not_1d(partitioner: Any) -> None:
    with pytest.raises(ConfigError, match=r"labels must be 1-D.*got shape \(4, 2\)") as info:
        partitioner.split(np.zeros((4, 2)), 2, seed=0)

    assert info.value.field == "labels"


@pytest.mark.parametrize(
    "partitioner", ALL_PARTITIONERS, ids=["iid", "dirichlet", "shards", "by_key"]
)
def test_partitioner_rejects_empty_labels(partitioner: Any) -> None:
    with pytest.raises(ConfigError, match=r"labels is empty"):
        partitioner.split([], 1, seed=0)


@pytest.mark.parametrize(
    "partitioner", ALL_PARTITIONERS, ids=["iid", "dirichlet", "shards", "by_key"]
)
@pytest.mark.parametrize("num_partitions", [0, -1, 2.0, True])
def test_partitioner_rejects_num_partitions_below_one_or_not_int(
    partitioner: Any, num_partitions: Any
) -> None:
    with pytest.raises(ConfigError, match=r"num_partitions must be an integer >= 1") as info:
        partitioner.split([0, 1, 0, 1], num_partitions, seed=0)

    assert info.value.field == "num_partitions"
