"""Message validation (FitRes, EvaluateRes), metric averaging, and seeded randomness.

`weighted_average` (core/metrics.py) and `derive_seed`/`generator` (core/rng.py)
are tested here too, since they exist to combine and seed these messages.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedloom.core import EvaluateRes, FitRes, derive_seed, generator, weighted_average
from fedloom.errors import InvalidResult
from generators import FAST

WEIGHTS = [np.zeros(3)]
"""Any weights-like value: FitRes does not check weights (the orchestrator conforms them)."""


# --- FitRes ----------------------------------------------------------------------------


def test_fit_res_accepts_valid_fields() -> None:
    metrics = {"acc": 0.5, "steps": 10, "converged": True, "device": "cpu"}

    result = FitRes(WEIGHTS, 0, metrics)

    assert result.num_examples == 0
    assert result.metrics == metrics


def test_fit_res_metrics_default_to_empty() -> None:
    result = FitRes(WEIGHTS, 3)

    assert result.metrics == {}


def test_fit_res_is_immutable() -> None:
    result = FitRes(WEIGHTS, 3)

    with pytest.raises(dataclasses.FrozenInstanceError):
        result.num_examples = 4  # type: ignore[misc]


@pytest.mark.parametrize(("num_examples", "shown"), [(-1, "-1"), (True, "True"), (2.0, "2.0")])
def test_fit_res_rejects_invalid_num_examples(num_examples: object, shown: str) -> None:
    with pytest.raises(
        InvalidResult, match=f"FitRes.num_examples must be a non-negative int, got {shown}"
    ):
        FitRes(WEIGHTS, num_examples)  # type: ignore[arg-type]


def test_fit_res_rejects_metrics_that_are_not_a_mapping() -> None:
    with pytest.raises(InvalidResult, match=r"FitRes.metrics must be a mapping .* got list"):
        FitRes(WEIGHTS, 1, [("acc", 0.5)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (np.array([0.5]), "ndarray"),
        (np.float32(0.5), "float32"),
        ([0.5], "list"),
        (None, "NoneType"),
    ],
)
def test_fit_res_rejects_a_non_scalar_metric(value: object, type_name: str) -> None:
    with pytest.raises(
        InvalidResult, match=rf"FitRes.metrics\['acc'\] is {type_name}; metrics hold bool, int"
    ) as info:
        FitRes(WEIGHTS, 1, {"acc": value})  # type: ignore[dict-item]

    assert "float(...)" in str(info.value)


# --- EvaluateRes -----------------------------------------------------------------------


def test_evaluate_res_accepts_an_int_or_float_loss() -> None:
    as_float = EvaluateRes(0.25, 4, {"acc": 0.5})
    as_int = EvaluateRes(1, 4)

    assert as_float.loss == 0.25
    assert as_int.loss == 1


@pytest.mark.parametrize(("loss", "shown"), [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_evaluate_res_rejects_a_non_finite_loss(loss: float, shown: str) -> None:
    with pytest.raises(InvalidResult, match=f"EvaluateRes.loss must be finite, got {shown}"):
        EvaluateRes(loss, 4)


@pytest.mark.parametrize(
    ("loss", "type_name"), [("0.1", "str"), (True, "bool"), (None, "NoneType")]
)
def test_evaluate_res_rejects_a_loss_that_is_not_a_number(loss: object, type_name: str) -> None:
    with pytest.raises(InvalidResult, match=f"EvaluateRes.loss must be a float, got {type_name}"):
        EvaluateRes(loss, 4)  # type: ignore[arg-type]


def test_evaluate_res_rejects_negative_num_examples() -> None:
    with pytest.raises(
        InvalidResult, match=r"EvaluateRes\.num_examples must be a non-negative int, got -3"
    ):
        EvaluateRes(0.5, -3)


def test_evaluate_res_rejects_a_tensor_valued_metric() -> None:
    with pytest.raises(InvalidResult, match=r"EvaluateRes.metrics\['acc'\] is ndarray"):
        EvaluateRes(0.5, 3, {"acc": np.array(0.5)})  # type: ignore[dict-item]


# --- weighted_average ------------------------------------------------------------------


def test_weighted_average_weights_by_num_examples() -> None:
    results = [(1, {"acc": 1.0}), (3, {"acc": 0.5})]

    averaged = weighted_average(results)

    # (1 * 1.0 + 3 * 0.5) / (1 + 3) = 2.5 / 4 = 0.625
    assert averaged == {"acc": 0.625}


def test_weighted_average_of_three_clients() -> None:
    results = [(2, {"loss": 1.0}), (1, {"loss": 4.0}), (1, {"loss": 0.0})]

    averaged = weighted_average(results)

    # (2 * 1.0 + 1 * 4.0 + 1 * 0.0) / (2 + 1 + 1) = 6 / 4 = 1.5
    assert averaged == {"loss": 1.5}


def test_weighted_average_averages_a_partial_metric_over_its_reporters_only() -> None:
    results = [(2, {"acc": 0.5, "loss": 1.0}), (6, {"acc": 0.25})]

    averaged = weighted_average(results)

    # acc: (2 * 0.5 + 6 * 0.25) / (2 + 6) = 2.5 / 8 = 0.3125
    # loss: only the first client reports it: 2 * 1.0 / 2 = 1.0 (not 2 / 8).
    assert averaged == {"acc": 0.3125, "loss": 1.0}


def test_weighted_average_skips_bools_and_strings() -> None:
    results = [(1, {"acc": 0.5, "converged": True, "device": "cpu"}), (1, {"converged": False})]

    averaged = weighted_average(results)

    assert averaged == {"acc": 0.5}


def test_weighted_average_turns_int_metrics_into_float_means() -> None:
    results = [(1, {"steps": 10}), (1, {"steps": 15})]

    averaged = weighted_average(results)

    # (10 + 15) / 2 = 12.5
    assert averaged == {"steps": 12.5}


def test_weighted_average_leaves_out_metrics_with_zero_total_examples() -> None:
    results = [(0, {"acc": 0.5}), (2, {"loss": 1.0})]

    averaged = weighted_average(results)

    # acc has weight 0 in total, so its mean is undefined and it is left out.
    assert averaged == {"loss": 1.0}


def test_weighted_average_of_nothing_is_empty() -> None:
    averaged = weighted_average([])

    assert averaged == {}


def test_weighted_average_consumes_a_generator() -> None:
    results = ((n, {"acc": 1.0}) for n in (1, 2, 3))

    averaged = weighted_average(results)

    assert averaged == {"acc": 1.0}


# --- rng -------------------------------------------------------------------------------


def test_derive_seed_is_deterministic() -> None:
    first = derive_seed(42, "client", "c1", 3)

    second = derive_seed(42, "client", "c1", 3)

    assert first == second
    assert 0 <= first < 2**32


def test_derive_seed_differs_across_keys_seeds_and_key_order() -> None:
    seeds = [
        derive_seed(0, "sample"),
        derive_seed(0, "evaluate"),
        derive_seed(1, "sample"),
        derive_seed(0, "sample", 1),
        derive_seed(0, 1, 2),
        derive_seed(0, 2, 1),
        derive_seed(0),
    ]

    assert len(set(seeds)) == len(seeds)


def test_derive_seed_differs_across_rounds() -> None:
    seeds = {derive_seed(7, "round", server_round) for server_round in range(200)}

    assert len(seeds) == 200


def test_derive_seed_is_the_same_in_another_process() -> None:
    """Strings are hashed with CRC-32, so a salted ``hash()`` (PYTHONHASHSEED) changes nothing."""
    code = "from fedloom.core import derive_seed; print(derive_seed(5, 'client', 'c1', 2))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}

    completed = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert int(completed.stdout) == derive_seed(5, "client", "c1", 2)


@FAST
@given(seed=st.integers(0, 2**32 - 1), key=st.text(max_size=8), server_round=st.integers(0, 10**6))
def test_generator_is_reproducible(seed: int, key: str, server_round: int) -> None:
    first = generator(seed, key, server_round).random(4)

    second = generator(seed, key, server_round).random(4)

    np.testing.assert_array_equal(first, second)


def test_generator_streams_differ_across_keys() -> None:
    draws = [generator(0, "round", server_round).random(4) for server_round in (1, 2)]

    assert not np.array_equal(draws[0], draws[1])
