"""Recorded runs for the readers' tests (runs, dashboard), written through the store's write side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedloom.core import Weights
from fedloom.store import (
    ClientInfo,
    ClientResultInfo,
    RoundInfo,
    RoundWrite,
    open_store,
)
from fedloom.store.checkpoints import write_model

T0 = 1_700_000_000.0


def record_run(
    folder: Path,
    *,
    run_id: str,
    name: str,
    rounds: int,
    status: str = "finished",
    t0: float = T0,
    store_url: str | None = None,
) -> None:
    """A run of `rounds` rounds with clients "a" and "b"; "b" fails round 2.

    Round r's weights are ``{"w": [r, r]}``; fit.loss is 1/(r+1); central.loss is 2/(r+1)
    (so the best round, the lowest central.loss, is the last one).
    """
    with open_store(store_url if store_url is not None else folder / "store.db") as store:
        store.create_run(
            run_id=run_id,
            name=name,
            config={"config": {"run": {"rounds": rounds}, "strategy": {"name": "fedavg"}}},
            seed=7,
            code_version="test",
            folder=str(folder),
        )
        for r in range(rounds + 1):
            model = write_model(folder, r, Weights({"w": np.full(2, float(r), np.float32)}))
            results: list[ClientResultInfo] = []
            if r > 0:
                results.append(
                    ClientResultInfo(
                        server_round=r,
                        client_id="a",
                        kind="fit",
                        metrics={"loss": 1.0 / (r + 1)},
                        num_examples=10,
                        duration_s=0.5,
                        failure=None,
                        staleness=None,
                    )
                )
                failed = r == 2
                results.append(
                    ClientResultInfo(
                        server_round=r,
                        client_id="b",
                        kind="fit",
                        metrics={} if failed else {"loss": 2.0 / (r + 1)},
                        num_examples=0 if failed else 20,
                        duration_s=0.25,
                        failure="timed out" if failed else None,
                        staleness=None,
                    )
                )
            metrics = {"central.loss": 2.0 / (r + 1)}
            if r > 0:
                metrics["fit.loss"] = 1.0 / (r + 1)
            store.record_round(
                run_id,
                RoundWrite(
                    round=RoundInfo(
                        server_round=r,
                        started_at=t0 + 10 * r,
                        ended_at=t0 + 10 * r + 4,
                        outcome="completed",
                        metrics=metrics,
                        num_results=sum(not x.failure for x in results),
                        num_failures=sum(bool(x.failure) for x in results),
                    ),
                    model=model,
                    results=tuple(results),
                    clients=tuple(
                        ClientInfo(
                            client_id=c, metadata={"site": c}, first_seen=t0, last_seen=t0 + 10 * r
                        )
                        for c in ("a", "b")
                    ),
                ),
            )
        if status != "running":
            store.set_status(run_id, status)  # type: ignore[arg-type]


def make_runs_dir(parent: Path) -> Path:
    """``parent/runs`` with two run folders: "alpha" (3 rounds, finished), "beta" (1, running)."""
    runs = parent / "runs"
    record_run(runs / "alpha", run_id="run-alpha", name="alpha", rounds=3)
    record_run(runs / "beta", run_id="run-beta", name="beta", rounds=1, status="running")
    return runs
