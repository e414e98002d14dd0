"""The quickstart's accuracy without DP, with central DP, and with local DP at epsilon 1, 4, 8.

Each run is the quickstart federation (10 clients, Dirichlet(0.5) digits, FedAvg) from
its config under examples/quickstart: ``fedloom.toml`` without DP,
``fedloom-central-dp.toml`` with central DP (the server clips each update and adds
noise; noise multiplier 1.0, clip norm 1.0), and ``fedloom-local-dp.toml`` with DP-SGD
on every client at epsilon 8, then 4 and 1 (delta 1e-5, per-example clip norm 1.0).
Accuracy is the central test accuracy after the last round; epsilon is what the run
reports after it (central: ``privacy.epsilon``; local: ``privacy.local_epsilon``, the
most any client spent).

Run: ``python benchmarks/privacy.py [--rounds N]`` (default: the configs' 20 rounds).
Prints one line per run, then one JSON line with accuracy_no_dp, accuracy_central_dp,
accuracy_local_dp_eps1, accuracy_local_dp_eps4, accuracy_local_dp_eps8 and the
epsilons spent (epsilon_central_dp, epsilon_local_dp_eps1, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import fedloom
from fedloom.config import load_config
from fedloom.strategies import LocalDP

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"


def run(config_file: str, rounds: int | None, *, epsilon: float | None = None) -> dict[str, float]:
    """Simulate one quickstart config; its final accuracy, epsilon spent and wall time."""
    config = load_config(QUICKSTART / config_file)
    if rounds is not None:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, rounds=rounds))
    federation = config.build()
    strategy = federation.strategy
    if epsilon is not None:  # the local DP config at another budget
        plugins = tuple(
            dataclasses.replace(p, epsilon=epsilon) if isinstance(p, LocalDP) else p
            for p in strategy.plugins
        )
        strategy = dataclasses.replace(strategy, plugins=plugins)
    started = time.perf_counter()
    result = fedloom.simulate(
        federation.client_fn,
        num_clients=federation.num_clients,
        rounds=federation.rounds,
        strategy=strategy,
        seed=federation.seed,
        partitioner=federation.partitioner,
        evaluate_fn=federation.evaluate_fn,
    )
    history = result.history
    names = history.metric_names()
    spent = next(
        (history.last(k) for k in ("privacy.epsilon", "privacy.local_epsilon") if k in names), 0.0
    )
    return {
        "accuracy": history.last("central.accuracy"),
        "epsilon": spent,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (default 20)")
    rounds = parser.parse_args().rounds
    sys.path.insert(0, str(QUICKSTART))  # the configs' task module
    runs = {
        "no_dp": ("fedloom.toml", None),
        "central_dp": ("fedloom-central-dp.toml", None),
        "local_dp_eps8": ("fedloom-local-dp.toml", 8.0),
        "local_dp_eps4": ("fedloom-local-dp.toml", 4.0),
        "local_dp_eps1": ("fedloom-local-dp.toml", 1.0),
    }
    figures: dict[str, float] = {}
    for name, (config_file, epsilon) in runs.items():
        outcome = run(config_file, rounds, epsilon=epsilon)
        print(
            f"{name:15s} accuracy {outcome['accuracy']:.4f}  epsilon {outcome['epsilon']:8.3f}  "
            f"({outcome['seconds']:.0f} s)",
            flush=True,
        )
        figures[f"accuracy_{name}"] = round(outcome["accuracy"], 4)
        if name != "no_dp":
            figures[f"epsilon_{name}"] = round(outcome["epsilon"], 4)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
