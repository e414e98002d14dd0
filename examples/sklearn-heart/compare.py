"""Federated LASSO logistic regression against each hospital training alone.

    python examples/sklearn-heart/compare.py [--rounds N]

Trains the federation of fedloom.toml in this process (early stopping and
best-model restore included), then, for each hospital, the same model on that
hospital's training data alone. Every model is scored on the four hospitals'
test sets together. Prints one line per model, then one JSON object;
``federated_beats_best_single`` is true when the federation has a lower log loss
than the best hospital alone and an accuracy at least as high as any of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import task  # noqa: E402

import fedloom  # noqa: E402
from fedloom.client import SklearnClient  # noqa: E402
from fedloom.config import load_config  # noqa: E402

EPOCHS = (5, 10, 20, 40, 80, 120)


def alone(hospital: str) -> tuple[int, dict[str, float]]:
    """The model trained on one hospital only, scored on the pooled test sets.

    Trained for each of `EPOCHS` SGD epochs, keeping the lowest test loss: a
    baseline tuned on the test set, so stronger than any honest single hospital.
    """
    x_train, y_train, _, _ = task.hospitals()[hospital]
    scores = {}
    for epochs in EPOCHS:
        client = SklearnClient(task.make_model(), x_train, y_train, classes=task.CLASSES)
        fitted = client.fit(client.get_weights(), {"local_epochs": epochs, "seed": 0})
        scores[epochs] = task.evaluate(fitted.weights, 0)
    best = min(scores, key=lambda epochs: scores[epochs]["loss"])
    return best, scores[best]


def compare(rounds: int | None = None) -> dict[str, object]:
    """Print the federated model's and each lone hospital's scores; return the summary."""
    config = load_config(HERE / "fedloom.toml")
    if rounds is not None:
        config = replace(config, run=replace(config.run, rounds=rounds))
    federation = config.build()
    result = fedloom.simulate(
        federation.client_fn,
        num_clients=federation.num_clients,
        rounds=federation.rounds,
        strategy=federation.strategy,
        seed=federation.seed,
        partitioner=federation.partitioner,
        evaluate_fn=federation.evaluate_fn,
        callbacks=list(federation.callbacks),
    )
    best = federation.keep_best
    weights = best.weights if best is not None and best.weights is not None else result.weights
    federated = task.evaluate(weights, 0)
    print(
        f"federated (4 hospitals, {len(result.history) - 1} rounds, best round restored): "
        f"accuracy={federated['accuracy']:.4f} loss={federated['loss']:.4f}"
    )
    singles = {}
    for hospital in task.hospitals():
        epochs, singles[hospital] = alone(hospital)
        print(
            f"{hospital} alone (best of {len(EPOCHS)} epoch counts: {epochs}): "
            f"accuracy={singles[hospital]['accuracy']:.4f} loss={singles[hospital]['loss']:.4f}"
        )
    best = min(singles, key=lambda hospital: singles[hospital]["loss"])
    summary: dict[str, object] = {
        "federated_accuracy": round(federated["accuracy"], 4),
        "federated_loss": round(federated["loss"], 4),
        "best_single_hospital": best,
        "best_single_accuracy": round(singles[best]["accuracy"], 4),
        "best_single_loss": round(singles[best]["loss"], 4),
    }
    summary["federated_beats_best_single"] = federated["loss"] < singles[best][
        "loss"
    ] and federated["accuracy"] >= max(s["accuracy"] for s in singles.values())
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description="Federated vs each hospital alone.")
    parser.add_argument("--rounds", type=int, help="override [run].rounds")
    args = parser.parse_args()
    print(json.dumps(compare(args.rounds)))


if __name__ == "__main__":
    main()
