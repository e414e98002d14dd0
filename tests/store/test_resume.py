"""Recording a simulation in the store and resuming it: bit-identical weights, checked state."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from fedloom.client import GradientClient
from fedloom.core import ClientContext, Metrics, Weights
from fedloom.errors import ConfigError, CorruptState
from fedloom.server import Callback, KeepBest, RunResult
from fedloom.simulation import simulate
from fedloom.store import Store, open_store
from fedloom.store.recorder import Recording, config_differences
from fedloom.strategies import Strategy, scaffold
from fedloom.strategies.optimizers import Adam

ROUNDS = 6
NUM_CLIENTS = 5
TARGETS = np.array(
    [[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [-1.0, 1.0, 2.0], [0.0, 2.0, 1.0], [2.0, -1.0, 0.0]]
)
CONFIG = {"config": {"strategy": {"name": "scaffold"}, "run": {"rounds": ROUNDS}}}


def client_fn(context: ClientContext) -> GradientClient:
    target = TARGETS[context.partition_id]

    def grad_fn(
        weights: Weights, rng: np.random.Generator
    ) -> tuple[float, dict[str, NDArray[np.float64]]]:
        noise = rng.normal(scale=0.1, size=3)  # minibatch noise from the task's seed
        diff = weights["w"] - target + noise
        return 0.5 * float((diff * diff).sum()), {"w": diff}

    return GradientClient(
        {"w": np.zeros(3)}, grad_fn, num_examples=1 + context.partition_id, lr=0.1, local_steps=3
    )


def central(weights: Weights, server_round: int) -> Metrics:
    return {"loss": float(((weights["w"] - TARGETS.mean(axis=0)) ** 2).sum())}


def strategy() -> Strategy:
    """SCAFFOLD (server and client control variates) with Adam moments, sampling 3 of 5."""
    return dataclasses.replace(
        scaffold(fraction_fit=0.6, fraction_evaluate=0), server_opt=Adam(lr=0.3)
    )


class Crash(Callback):
    """Raises in round `at` after aggregation, before the round is recorded (a kill)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_aggregate(self, server_round: int, weights: Weights, metrics: Metrics) -> None:
        if server_round == self.at:
            raise KeyboardInterrupt(f"killed in round {server_round}")


def run(
    store: Store,
    folder: Path,
    *,
    resume: bool = False,
    crash_at: int | None = None,
    config: dict | None = None,
    keep_best: KeepBest | None = None,
) -> RunResult:
    callbacks: list[Callback] = [Crash(crash_at)] if crash_at is not None else []
    if keep_best is not None:
        callbacks.append(keep_best)
    return simulate(
        client_fn,
        num_clients=NUM_CLIENTS,
        rounds=ROUNDS,
        strategy=strategy(),
        seed=11,
        evaluate_fn=central,
        callbacks=callbacks,
        recording=Recording(
            store=store,
            run_id=folder.name,
            folder=folder,
            config=config or CONFIG,
            seed=11,
            resume=resume,
        ),
    )


@pytest.fixture
def uninterrupted(store: Store, tmp_path: Path) -> RunResult:
    return run(store, tmp_path / "whole")


def test_resumed_simulation_is_bit_identical_to_an_uninterrupted_one(
    store: Store, tmp_path: Path, uninterrupted: RunResult
) -> None:
    folder = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(store, folder, crash_at=3)
    with pytest.raises(KeyboardInterrupt):  # killed again after resuming
        run(store, folder, resume=True, crash_at=5)
    after_kills = store.get_run("killed")

    best = KeepBest(metric="central.loss", mode="min")
    resumed = run(store, folder, resume=True, keep_best=best)

    assert (after_kills.rounds_done, after_kills.status) == (4, "interrupted")
    assert resumed.weights.flat.tobytes() == uninterrupted.weights.flat.tobytes()
    assert [r.server_round for r in store.rounds("killed")] == list(range(ROUNDS + 1))
    assert [r.metrics for r in resumed.history] == [r.metrics for r in uninterrupted.history]
    assert store.get_run("killed").status == "finished"
    # KeepBest got the best round's weights back from the store on resume
    losses = [r.metrics["central.loss"] for r in uninterrupted.history]
    assert best.server_round == int(np.argmin(losses))
    assert best.weights is not None
    assert best.weights.equals(store.load_weights("killed", best.server_round))


def test_store_records_strategy_state_and_client_results(
    store: Store, uninterrupted: RunResult
) -> None:
    rounds = store.rounds("whole")
    results = store.client_results("whole", 2)

    assert all(r.state_sha256 for r in rounds)  # Adam moments and SCAFFOLD's c every round
    assert rounds[2].num_results == 3
    assert len(results) == 3  # 3 of 5 sampled; no evaluation
    assert all(r.kind == "fit" and r.failure is None and r.num_examples >= 1 for r in results)
    assert {c.client_id for c in store.clients("whole")} <= {str(i) for i in range(NUM_CLIENTS)}
    assert store.load_weights("whole", "last").equals(uninterrupted.weights)


def test_resume_refuses_a_config_that_changes_the_math(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(store, folder, crash_at=2)
    changed = {"config": {"strategy": {"name": "fedavg"}, "run": {"rounds": ROUNDS}}}

    with pytest.raises(ConfigError, match=r"changes the math .* at config\.strategy\.name"):
        run(store, folder, resume=True, config=changed)

    assert store.get_run("run").rounds_done == 1


def test_resume_allows_and_records_harmless_changes(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(store, folder, crash_at=2)
    changed = {**CONFIG, "config": {**CONFIG["config"], "server": {"fit_timeout_s": 5.0}}}
    partial = folder / "checkpoints" / ".round-000002.safetensors.x1y2.tmp"  # a killed write
    partial.write_bytes(b"half a checkpoint")

    run(store, folder, resume=True, config=changed)

    assert not partial.exists()

    events = {e.kind: e.detail for e in store.events("run")}
    assert events["config_changed"] == {
        "config.server.fit_timeout_s": {"recorded": None, "new": 5.0}
    }
    assert store.get_run("run").config == changed


def test_resume_refuses_a_damaged_state_file(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(store, folder, crash_at=3)
    state = Path(store.rounds("run")[2].state_path)
    state.write_bytes(state.read_bytes()[:-8])  # truncated

    with pytest.raises(CorruptState, match=r"strategy state file .* is damaged or truncated"):
        run(store, folder, resume=True)


def test_resume_of_an_unknown_run_names_the_known_ones(store: Store, tmp_path: Path) -> None:
    run(store, tmp_path / "whole")

    with pytest.raises(ConfigError, match=r"no run 'other'.*'whole'"):
        run(store, tmp_path / "other", resume=True)


def test_config_differences_splits_math_from_harmless_keys() -> None:
    recorded = {"file": "a.toml", "config": {"strategy": {"lr": 0.1}, "server": {"heartbeat_s": 2}}}
    new = {"file": "b.toml", "config": {"strategy": {"lr": 0.2}, "server": {"heartbeat_s": 1}}}

    math, harmless = config_differences(recorded, new)

    assert math == {"config.strategy.lr": (0.1, 0.2)}
    assert harmless == {"file": ("a.toml", "b.toml"), "config.server.heartbeat_s": (2, 1)}


def test_a_round_that_fails_to_commit_is_not_half_recorded(tmp_path: Path) -> None:
    """Files are written first; if the transaction cannot happen, the store has no trace of it."""
    store = open_store(tmp_path / "store.db")
    folder = tmp_path / "run"
    original = store.record_round
    calls = 0

    def failing(run_id: str, write: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # round 2 (round 0 and 1 went through)
            raise OSError("disk full")
        original(run_id, write)  # type: ignore[arg-type]

    store.record_round = failing  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        run(store, folder)
    store.record_round = original  # type: ignore[method-assign]

    assert [r.server_round for r in store.rounds("run")] == [0, 1]
    assert store.get_run("run").status == "failed"
    store.close()
