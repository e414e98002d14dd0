"""Privacy-accounting metrics in the clear next to masked inputs (local DP's epsilon)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from fedloom.core import Failure
from fedloom.errors import SecAggAborted
from fedloom.secagg import SecAggPlus
from fedloom.secagg.quantize import quantization_error_bound
from fedloom.secagg.stages import CLEAR_METRICS

sys.path.insert(0, str(Path(__file__).parent))
from harness import make_updates, run_round

logging.getLogger("fedloom").setLevel(logging.ERROR)

CONFIG = SecAggPlus(quantization_bits=16)
ASKED = ("dpsgd.epsilon",)


def test_survivors_clear_epsilons_come_back_and_the_sum_is_unchanged() -> None:
    updates = make_updates(6, 8)
    epsilons = {c: 0.5 + i for i, c in enumerate(updates)}
    metrics = {c: {"dpsgd.epsilon": e, "loss": 0.1} for c, e in epsilons.items()}

    outcome = run_round(
        CONFIG, updates, clear_metrics=ASKED, metrics=metrics, drop={"unmask": {"c5"}}
    )

    assert outcome.error is None
    assert outcome.result is not None
    # only the asked-for accounting metric left the clients, for those in the sum
    assert outcome.result.metrics == {c: {"dpsgd.epsilon": epsilons[c]} for c in updates}
    step = quantization_error_bound(clipping_range=4.0, bits=16, stochastic=True)
    expected = np.sum(list(updates.values()), axis=0)
    assert np.abs(outcome.result.total - expected).max() < 6 * step


def test_without_the_ask_no_metric_leaves_the_clients() -> None:
    updates = make_updates(4, 8)
    metrics = {c: {"dpsgd.epsilon": 1.0} for c in updates}

    outcome = run_round(CONFIG, updates, metrics=metrics)

    assert outcome.result is not None
    assert outcome.result.metrics == {}
    assert all(reply.metrics == {} for reply in outcome.replies["masked_input"].values())


def test_a_masked_input_without_its_epsilon_is_dropped_before_it_joins_the_sum() -> None:
    updates = make_updates(5, 8)
    metrics = {c: {"dpsgd.epsilon": 2.0} for c in updates if c != "c1"}

    outcome = run_round(CONFIG, updates, clear_metrics=ASKED, metrics=metrics)

    assert outcome.error is None
    assert outcome.result is not None
    assert "c1" not in outcome.result.survivors
    assert "expected the finite number 'dpsgd.epsilon'" in outcome.server.failures["c1"]
    step = quantization_error_bound(clipping_range=4.0, bits=16, stochastic=True)
    expected = np.sum([u for c, u in updates.items() if c != "c1"], axis=0)
    assert np.abs(outcome.result.total - expected).max() < 4 * step  # its mask was removed


def test_clients_refuse_to_send_any_other_metric_in_the_clear() -> None:
    updates = make_updates(4, 8)
    metrics = {c: {"dpsgd.epsilon": 1.0, "loss": 0.3} for c in updates}

    def ask_for_loss(stage: str, client: str, extra: dict[str, object]) -> dict[str, object]:
        if stage == "masked_input":
            extra[CLEAR_METRICS] = "dpsgd.epsilon,loss"
        return extra

    outcome = run_round(CONFIG, updates, clear_metrics=ASKED, metrics=metrics, tamper=ask_for_loss)

    replies = outcome.replies["masked_input"]
    assert all(
        isinstance(r, Failure) and isinstance(r.error, SecAggAborted) for r in replies.values()
    )
    reason = next(iter(replies.values())).reason  # type: ignore[union-attr]
    assert "['loss']" in reason
    assert "privacy-accounting metrics (dpsgd.epsilon)" in reason
    assert isinstance(outcome.error, SecAggAborted)  # nobody masked: the round stops
