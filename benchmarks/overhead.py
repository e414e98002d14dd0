"""What fedloom adds to training: the quickstart through `fedloom.simulate` vs a plain loop.

Both train the quickstart's model on the same Dirichlet(0.5) split of the
digits, with the same local epochs, batch size and optimizer, for the same
rounds, without evaluation. The plain loop is what one writes by hand: one
model, ``load_state_dict`` per client, a hand-written weighted average.

Run: ``python benchmarks/overhead.py [--rounds R] [--repeat N]``.
Prints both times (the best of N alternating runs), then one JSON line with
``fedloom_over_plain``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "quickstart"))

import task

from fedloom import fedavg, simulate
from fedloom.data import Dirichlet

NUM_CLIENTS = 10
ALPHA = 0.5
SEED = 0


def run_fedloom(rounds: int) -> float:
    result = simulate(
        task.client_fn,
        num_clients=NUM_CLIENTS,
        rounds=rounds,
        strategy=fedavg(fraction_evaluate=0),
        partitioner=Dirichlet(alpha=ALPHA),
        seed=SEED,
    )
    return accuracy({k: torch.from_numpy(v.copy()) for k, v in result.weights.items()})


def run_plain(rounds: int) -> float:
    x_train, y_train, _, _ = task.load_data()
    parts = Dirichlet(alpha=ALPHA).split(y_train, NUM_CLIENTS, seed=SEED)
    data = []
    for indices in parts:
        x, y = torch.from_numpy(x_train[indices]), torch.from_numpy(y_train[indices])
        holdout = max(1, len(indices) // 10)
        data.append((x[holdout:], y[holdout:]))
    model = task.make_model()
    loss_fn = torch.nn.CrossEntropyLoss()
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for server_round in range(1, rounds + 1):
        total = sum(len(y) for _, y in data)
        average = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for client, (x, y) in enumerate(data):
            model.load_state_dict(global_state)
            optimizer = task.make_optimizer(model.parameters())
            generator = torch.Generator().manual_seed(server_round * 1000 + client)
            model.train()
            for _ in range(2):
                order = torch.randperm(len(y), generator=generator)
                for start in range(0, len(y), 16):
                    batch = order[start : start + 16]
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model(x[batch]), y[batch])
                    loss.backward()
                    optimizer.step()
            for k, v in model.state_dict().items():
                average[k] += v.detach() * (len(y) / total)
        global_state = average
    return accuracy(global_state)


def accuracy(state: dict[str, torch.Tensor]) -> float:
    _, _, x_test, y_test = task.load_data()
    model = task.make_model()
    model.load_state_dict(state)
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_test)).argmax(dim=1)
    return float((predicted == torch.from_numpy(y_test)).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    run_plain(1)  # warm up torch and the data cache for both
    times: dict[str, list[float]] = {"plain": [], "fedloom": []}
    accuracies: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, run in (("plain", run_plain), ("fedloom", run_fedloom)):
            start = time.perf_counter()
            accuracies[name] = run(args.rounds)
            times[name].append(time.perf_counter() - start)
    plain_s, fedloom_s = min(times["plain"]), min(times["fedloom"])
    print(f"plain PyTorch loop: {plain_s:6.2f} s  (test accuracy {accuracies['plain']:.3f})")
    print(f"fedloom.simulate:   {fedloom_s:6.2f} s  (test accuracy {accuracies['fedloom']:.3f})")
    figures = {
        "rounds": args.rounds,
        "plain_s": round(plain_s, 3),
        "fedloom_s": round(fedloom_s, 3),
        "fedloom_over_plain": round(fedloom_s / plain_s, 3),
        "plain_accuracy": round(accuracies["plain"], 4),
        "fedloom_accuracy": round(accuracies["fedloom"], 4),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
