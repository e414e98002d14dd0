"""What recording a round costs: the time writing its record and checkpoint, over the round's time.

Each round the store writes the global weights (and strategy state) as a
safetensors file, atomically and fsynced, then commits one transaction with the
round, its client results and its clients (SQLite, ``synchronous=FULL``). This
benchmark runs `fedloom.simulate` with a store and, per round, measures that
write (the recorder's `on_checkpoint`) and the whole round (from
`on_round_start` to after the checkpoint is committed). The share is the sum of
the writes over the sum of the rounds (round 0, the initial state, excluded).

- ``store_share_quickstart``: the quickstart (10 clients, the digits MLP, with
  federated and central evaluation); the goal is at most 0.05.
- ``store_share_100m``: a model of 100M float32 parameters (400 MB) and 2 clients
  whose fit is one pass over the weights (``w + 0.001``): the round is mostly
  moving the model, so this is an upper bound of the share for a model this size.

Run: ``python benchmarks/store.py [--rounds R] [--rounds-100m R] [--dir DIR]``.
The checkpoints go to a temporary folder under ``--dir`` (default: the system's
temporary folder), removed afterwards. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedloom import fedavg, simulate
from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Metrics, VectorSpec, Weights
from fedloom.server import Callback, RoundRecord
from fedloom.store import open_store
from fedloom.store.recorder import Recording
from fedloom.strategies import StrategyState

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"
PARAMS_100M = 100_000_000


class RoundClock(Callback):
    """Times each round, and the recorder's write inside it.

    `simulate` puts the store's recorder first in the callbacks, so between this
    clock's `on_evaluate` (the round's work is done) and its `on_checkpoint` the
    recorder wrote the round's files and committed its transaction.
    """

    def __init__(self) -> None:
        self.rounds: list[tuple[float, float]] = []  # (write seconds, round seconds)
        self._started = 0.0
        self._evaluated = 0.0

    def on_round_start(self, server_round: int) -> None:
        self._started = time.perf_counter()

    def on_evaluate(self, server_round: int, metrics: Metrics) -> None:
        self._evaluated = time.perf_counter()

    def on_checkpoint(self, record: RoundRecord, state: StrategyState) -> None:
        if record.server_round > 0:
            now = time.perf_counter()
            self.rounds.append((now - self._evaluated, now - self._started))

    def share(self) -> float:
        writes = sum(write for write, _ in self.rounds)
        totals = sum(total for _, total in self.rounds)
        return writes / totals


def timed_run(name: str, folder: Path, **kwargs: Any) -> RoundClock:
    """`simulate(**kwargs)` recorded in a SQLite store in `folder`; its round clock."""
    clock = RoundClock()
    store = open_store(folder / "store.db")
    try:
        simulate(
            **kwargs,
            callbacks=[clock],
            recording=Recording(store=store, run_id=name, folder=folder / name),
        )
    finally:
        store.close()
    return clock


def quickstart(folder: Path, rounds: int) -> RoundClock:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(QUICKSTART))
    import task

    from fedloom.data import Dirichlet

    return timed_run(
        "quickstart",
        folder,
        client_fn=task.client_fn,
        num_clients=10,
        rounds=rounds,
        strategy=fedavg(),
        partitioner=Dirichlet(alpha=0.5),
        evaluate_fn=task.evaluate,
        seed=0,
    )


def big_client_fn(context: ClientContext) -> FunctionClient:
    def fit(weights: Weights, config: Config) -> tuple[Weights, int, Metrics]:
        return Weights.from_flat(weights.spec, weights.flat + np.float32(0.001)), 1, {}

    return FunctionClient(weights={"w": np.zeros(1, dtype=np.float32)}, fit=fit)


def model_100m(folder: Path, rounds: int) -> RoundClock:
    spec = VectorSpec(names=("w",), shapes=((PARAMS_100M,),), dtype="float32")
    initial = Weights.from_flat(spec, np.zeros(PARAMS_100M, dtype=np.float32))
    return timed_run(
        "model-100m",
        folder,
        client_fn=big_client_fn,
        num_clients=2,
        rounds=rounds,
        strategy=fedavg(fraction_evaluate=0),
        initial_weights=initial,
        seed=0,
    )


def report(label: str, clock: RoundClock) -> None:
    for index, (write, total) in enumerate(clock.rounds, start=1):
        print(f"{label} round {index}: record+checkpoint {write:7.3f} s of {total:7.3f} s")
    print(f"{label}: share {clock.share():.4f}")
    if len(clock.rounds) > 1:  # round 1 also loads data and warms up: the steady state
        writes = sum(write for write, _ in clock.rounds[1:])
        totals = sum(total for _, total in clock.rounds[1:])
        print(f"{label}: share without round 1 {writes / totals:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="quickstart rounds")
    parser.add_argument("--rounds-100m", type=int, default=3, help="100M-parameter rounds")
    parser.add_argument("--dir", type=Path, default=None, help="where checkpoints go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as temporary:
        folder = Path(temporary)
        small = quickstart(folder / "quickstart", args.rounds)
        report("quickstart", small)
        big = model_100m(folder / "100m", args.rounds_100m)
        report("100M parameters", big)
    print(
        json.dumps(
            {
                "store_share_quickstart": round(small.share(), 4),
                "store_share_100m": round(big.share(), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
