"""TensorBoardLogger: event files read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedloom import simulate
from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Metrics, Weights, WeightsLike
from fedloom.observe.tensorboard import TensorBoardLogger, metric_tag
from fedloom.server import History, RoundRecord
from fedloom.strategies import fedavg


def _client_fn(context: ClientContext) -> FunctionClient:
    offset = float(context.client_id)  # clients "0", "1", "2"

    def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
        if context.client_id == "2" and config["server_round"] == 2:
            raise RuntimeError("disk full")
        # loss = 10 * round + client: client "1" reports 11, 21, 31
        return {"x": weights["x"] + 1.0}, 1, {"loss": 10.0 * int(config["server_round"]) + offset}

    return FunctionClient(weights={"x": [0.0]}, fit=fit)


def _central(weights: Weights, server_round: int) -> Metrics:
    return {"x": float(weights["x"][0])}


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_tensorboard_logs_global_and_per_client_metrics_of_a_run(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)

    simulate(
        _client_fn,
        num_clients=3,
        rounds=3,
        strategy=fedavg(min_fit=2, fraction_evaluate=0.0),
        evaluate_fn=_central,
        callbacks=[logger],
    )
    scalars = _scalars(tmp_path)

    # every result moves x by +1, so central x is the round number; round 0 is the initial x
    assert scalars["central/x"] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
    assert [step for step, _ in scalars["fit/loss"]] == [1, 2, 3]
    assert scalars["client/1/fit/loss"] == [(1, 11.0), (2, 21.0), (3, 31.0)]
    assert scalars["client/2/fit/loss"] == [(1, 12.0), (3, 32.0)]  # it failed round 2
    assert scalars["client/2/fit/failed"] == [(2, 1.0)]
    assert scalars["round/num_failures"] == [(1, 0.0), (2, 1.0), (3, 0.0)]
    assert scalars["round/num_results"] == [(1, 3.0), (2, 2.0), (3, 3.0)]
    assert [step for step, _ in scalars["round/duration_s"]] == [1, 2, 3]
    assert all(value >= 0 for _, value in scalars["round/duration_s"])
    assert [step for step, _ in scalars["client/0/fit/duration_s"]] == [1, 2, 3]


def test_simulate_with_a_run_dir_writes_event_files_there(tmp_path: Path) -> None:
    simulate(
        _client_fn,
        num_clients=3,
        rounds=2,
        strategy=fedavg(min_fit=2, fraction_evaluate=0.0),
        evaluate_fn=_central,
        run_dir=tmp_path / "run",
    )

    assert _scalars(tmp_path / "run")["central/x"] == [(0, 0.0), (1, 1.0), (2, 2.0)]


def test_tensorboard_records_failure_reasons_as_text(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)

    logger.on_round_end(
        RoundRecord(server_round=4, metrics={}, failures={"site-9": "timed out"}), Weights({})
    )
    logger.close()
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()

    texts = accumulator.Tensors("failures")
    assert texts[0].step == 4
    assert b"site-9" in texts[0].tensor_proto.string_val[0]
    assert b"timed out" in texts[0].tensor_proto.string_val[0]


def test_tensorboard_after_resume_shows_each_round_once(tmp_path: Path) -> None:
    """A run killed during round 3 wrote events for it; the resumed run's round 3 replaces them."""
    before = TensorBoardLogger(tmp_path)
    for r in (1, 2, 3):
        before.on_round_end(
            RoundRecord(server_round=r, metrics={"fit.loss": float(r)}), Weights({})
        )
    before.close()  # as if killed before round 3 was recorded

    after = TensorBoardLogger(tmp_path)
    recorded = History(
        [RoundRecord(server_round=r, metrics={"fit.loss": float(r)}) for r in (1, 2)]
    )
    after.on_resume(recorded, lambda r: Weights({}))
    for r in (3, 4):
        after.on_round_end(RoundRecord(server_round=r, metrics={"fit.loss": 10.0 * r}), Weights({}))
    after.close()

    assert _scalars(tmp_path)["fit/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_metric_tag_turns_the_namespace_into_a_tag_group() -> None:
    assert metric_tag("central.accuracy") == "central/accuracy"
    assert metric_tag("evaluate.top 5.acc") == "evaluate/top_5.acc"
