"""SecAgg+ with the protocol core: sums, dropouts, aborts, and an honest client's checks."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from fedloom.core import Failure, FitIns, FitRes, Weights
from fedloom.errors import SecAggAborted, StageOrderError, StageTimeout
from fedloom.secagg import SecAggPlus
from fedloom.secagg.quantize import quantization_error_bound
from fedloom.secagg.server import SecAggServer
from fedloom.secagg.sessions import SecAggSessions
from fedloom.secagg.stages import PAYLOAD, STAGE

sys.path.insert(0, str(Path(__file__).parent))
from harness import make_updates, run_round

logging.getLogger("fedloom").setLevel(logging.ERROR)

DIM = 64


def _bound(config: SecAggPlus, count: int) -> float:
    """A sum of `count` stochastically rounded values is off by less than `count` steps."""
    per_value = quantization_error_bound(
        clipping_range=config.clipping_range, bits=config.quantization_bits, stochastic=True
    )
    return count * per_value


def _plain_sum(updates: dict[str, np.ndarray], clients: tuple[str, ...]) -> np.ndarray:
    return np.sum([updates[c] for c in clients], axis=0)


@pytest.mark.parametrize("n", [10, 50, 100])
def test_secagg_unmasked_sum_equals_plaintext_sum_of_survivors(n: int) -> None:
    """Two clients drop after sharing keys and one after masking; the sum covers the rest."""
    config = SecAggPlus(quantization_bits=16)
    updates = make_updates(n, DIM, seed=n)
    drop = {"masked_input": {"c1", "c2"}, "unmask": {"c3"}}

    outcome = run_round(config, updates, drop=drop)

    assert outcome.error is None
    result = outcome.result
    assert result is not None
    assert set(result.survivors) == set(updates) - {"c1", "c2"}  # c3 masked, so it counts
    assert result.count == n - 2
    assert result.total_weight == n - 2
    expected = _plain_sum(updates, result.survivors)
    assert np.abs(result.total - expected).max() < _bound(config, n - 2)
    assert np.abs(result.total - expected).max() > 0  # it really was quantized


def test_secagg_weighted_sum_uses_example_counts() -> None:
    config = SecAggPlus(quantization_bits=20)
    updates = make_updates(10, DIM, seed=3)
    examples = {client: 10 * (i + 1) for i, client in enumerate(updates)}

    outcome = run_round(config, updates, num_examples=examples, weighted=True)

    assert outcome.result is not None
    assert outcome.result.total_weight == sum(examples.values())  # 10 * (1 + ... + 10) = 550
    expected = np.sum([examples[c] * updates[c] for c in updates], axis=0)
    # each weighted value is off by less than w_i steps: less than sum(w) steps in all
    assert np.abs(outcome.result.total - expected).max() < _bound(config, 550)


def test_secagg_complete_graph_survives_exactly_n_minus_t_dropouts_after_masking() -> None:
    """n=10, complete graph, t=6: 4 dropouts after masking are fine, 5 abort cleanly."""
    config = SecAggPlus(reconstruction_threshold=6)
    updates = make_updates(10, DIM, seed=4)
    params = config.for_round(10)
    assert (params.num_neighbours, params.threshold) == (9, 6)

    ok = run_round(config, updates, drop={"masked_input": {"c0", "c1", "c2", "c3"}})
    too_many = run_round(config, updates, drop={"masked_input": {"c0", "c1", "c2", "c3", "c4"}})

    assert ok.result is not None
    assert ok.result.count == 6
    expected = _plain_sum(updates, ok.result.survivors)
    assert np.abs(ok.result.total - expected).max() < _bound(config, 6)
    assert isinstance(too_many.error, SecAggAborted)
    assert too_many.error.stage == "masked_input"
    assert "fewer than t=6" in str(too_many.error)
    # what the server holds after the abort: masked vectors only, not one share in clear
    assert too_many.server.held_shares == {}
    assert too_many.server.stage == "masked_input"  # no unmask request went out
    assert "unmask" not in too_many.replies or not too_many.replies["unmask"]


def test_secagg_sparse_graph_tolerates_dropouts_up_to_k_plus_1_minus_t_per_neighbourhood() -> None:
    """n=100, k=20, t=13: dropping 8 of one client's neighbourhood works, dropping 9 aborts."""
    config = SecAggPlus()
    updates = make_updates(100, 16, seed=5)
    params = config.for_round(100)
    assert (params.num_neighbours, params.threshold) == (20, 13)
    # the harness seeds the server's graph with default_rng(1): the same graph as this one
    probe = SecAggServer(params, participants=list(updates), dim=16, rng=np.random.default_rng(1))
    neighbours = sorted(probe.graph["c0"])
    spare = params.num_neighbours + 1 - params.threshold  # 8 holders may go

    ok = run_round(config, updates, drop={"masked_input": set(neighbours[:spare])})
    too_many = run_round(config, updates, drop={"masked_input": set(neighbours[: spare + 1])})

    assert ok.result is not None
    assert ok.result.count == 100 - spare
    expected = _plain_sum(updates, ok.result.survivors)
    assert np.abs(ok.result.total - expected).max() < _bound(config, 100)
    assert isinstance(too_many.error, SecAggAborted)
    assert too_many.server.held_shares == {}


def test_secagg_dropouts_during_unmasking_beyond_t_abort_with_fewer_than_t_shares_held() -> None:
    config = SecAggPlus(reconstruction_threshold=6)
    updates = make_updates(10, DIM, seed=6)

    outcome = run_round(config, updates, drop={"unmask": {"c0", "c1", "c2", "c3", "c4"}})

    assert isinstance(outcome.error, SecAggAborted)
    assert outcome.error.stage == "unmask"
    held = outcome.server.held_shares
    assert held  # the 5 that answered revealed self-mask shares...
    assert all(b < 6 and s == 0 for b, s in held.values())  # ...fewer than t of each


def test_secagg_clients_refuse_a_server_that_marks_a_peer_both_dropped_and_alive() -> None:
    config = SecAggPlus()
    updates = make_updates(10, DIM, seed=7)

    def lie(stage: str, client: str, extra: dict[str, object]) -> dict[str, object]:
        if stage == "unmask":
            payload = json.loads(str(extra[PAYLOAD]))
            payload["dropped"] = ["c9"] if client != "c9" else ["c8"]
            extra[PAYLOAD] = json.dumps(payload)
        return extra

    outcome = run_round(config, updates, tamper=lie)

    replies = outcome.replies["unmask"]
    assert replies
    assert all(isinstance(reply, Failure) for reply in replies.values())
    errors = [reply.error for reply in replies.values() if isinstance(reply, Failure)]
    assert all(isinstance(error, SecAggAborted) for error in errors)
    assert "both dropped and alive" in str(errors[0])
    assert outcome.server.held_shares == {}  # no client revealed anything
    assert isinstance(outcome.error, SecAggAborted)


def test_secagg_clients_refuse_to_unmask_fewer_than_t_survivors() -> None:
    """A server claiming most peers dropped (to isolate one update) gets no share."""
    config = SecAggPlus(reconstruction_threshold=6)
    updates = make_updates(10, DIM, seed=8)

    def isolate(stage: str, client: str, extra: dict[str, object]) -> dict[str, object]:
        if stage == "unmask":
            payload = json.loads(str(extra[PAYLOAD]))
            everyone = payload["survivors"] + payload["dropped"]
            payload["survivors"], payload["dropped"] = everyone[:1], everyone[1:]
            extra[PAYLOAD] = json.dumps(payload)
        return extra

    outcome = run_round(config, updates, tamper=isolate)

    replies = outcome.replies["unmask"]
    assert all(isinstance(reply, Failure) for reply in replies.values())
    assert "fewer than the threshold" in str(next(iter(replies.values())).reason)  # type: ignore[union-attr]
    assert outcome.server.held_shares == {}


def _stage_task(server: SecAggServer, client: str) -> FitIns:
    return FitIns(weights=Weights({}), config=server.requests()[client])


def test_secagg_client_aborts_on_a_stage_out_of_order() -> None:
    config = SecAggPlus()
    params = config.for_round(3)
    server = SecAggServer(params, participants=["a", "b", "c"], dim=4, rng=np.random.default_rng(0))
    sessions = SecAggSessions()
    setup = _stage_task(server, "a")
    skipped = FitIns(
        weights=Weights({}), config={**setup.config, STAGE: "masked_input"}
    )  # skips share_keys

    first = sessions.handle("a", setup, fit=lambda ins: FitRes({}, 0))
    out_of_order = sessions.handle("a", skipped, fit=lambda ins: FitRes({}, 0))
    replayed = sessions.handle(
        "a",
        FitIns(weights=Weights({}), config={**setup.config, STAGE: "unmask"}),
        fit=lambda ins: FitRes({}, 0),
    )

    assert isinstance(first, FitRes)
    assert isinstance(out_of_order, Failure)
    assert isinstance(out_of_order.error, StageOrderError)
    assert "got stage 'masked_input' after 'setup'" in out_of_order.reason
    assert sessions.session("a") is None  # the session is discarded...
    assert isinstance(replayed, Failure)
    assert isinstance(replayed.error, StageOrderError)  # ...so later stages abort too


def test_secagg_client_aborts_a_stage_arriving_after_its_deadline() -> None:
    config = SecAggPlus()
    params = config.for_round(3)
    server = SecAggServer(
        params,
        participants=["a", "b", "c"],
        dim=4,
        rng=np.random.default_rng(0),
        idle_timeout_s=30.0,
    )
    now = [100.0]
    sessions = SecAggSessions(clock=lambda: now[0])
    for client in ("a", "b", "c"):
        server.receive(
            client,
            sessions.handle(client, _stage_task(server, client), fit=lambda ins: FitRes({}, 0)),
        )
    server.close_stage()
    now[0] += 31.0  # the server took longer than the client's idle deadline

    late = sessions.handle("a", _stage_task(server, "a"), fit=lambda ins: FitRes({}, 0))

    assert isinstance(late, Failure)
    assert isinstance(late.error, StageTimeout)
    assert "30 s deadline" in late.reason


def test_secagg_client_refuses_a_setup_without_a_finite_stage_deadline() -> None:
    config = SecAggPlus()
    server = SecAggServer(
        config.for_round(3), participants=["a", "b", "c"], dim=4, rng=np.random.default_rng(0)
    )
    request = dict(server.requests()["a"])
    payload = json.loads(str(request[PAYLOAD]))
    payload["params"]["idle_timeout_s"] = float("inf")
    request[PAYLOAD] = json.dumps(payload)

    reply = SecAggSessions().handle(
        "a", FitIns(weights=Weights({}), config=request), fit=lambda ins: FitRes({}, 0)
    )

    assert isinstance(reply, Failure)
    assert isinstance(reply.error, SecAggAborted)
    assert "finite number > 0 (deadlines too)" in reply.reason


def test_secagg_client_refuses_a_weight_that_could_overflow_the_modulus() -> None:
    """48-bit sums of 3 clients' 40-bit values leave room for weights up to 85."""
    config = SecAggPlus(quantization_bits=40, modulus_bits=48)
    updates = make_updates(3, 4, seed=9)
    # (2^48 - 1) // ((2^40 - 1) * 3) = 85
    examples = {"c0": 85, "c1": 85, "c2": 86}

    outcome = run_round(config, updates, num_examples=examples, weighted=True)

    refused = outcome.replies["masked_input"]["c2"]
    assert isinstance(refused, Failure)
    assert "num_examples=86) is over 85" in refused.reason
    assert outcome.result is not None  # the others go on (t = ceil(0.6 * 3) = 2)
    assert outcome.result.survivors == ("c0", "c1")
    assert outcome.result.total_weight == 170
