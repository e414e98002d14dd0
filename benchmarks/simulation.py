"""Client-updates per second of each simulation engine, against the centralized physical limit.

The workload: 1,000 clients each holding 60 samples of 784 features in 10
classes (MNIST-sized, synthetic and seeded: 60,000 samples in all), a 784-100-10
MLP, 1 local epoch at batch size 10 with SGD (6 steps per client), 100 clients
per round (FedAvg, ``fraction_fit=0.1``), 10 rounds. Each engine runs the whole
federation through ``fedloom.simulate(engine=...)`` in a process of its own, so
its peak memory is its own; the timed span is the ``simulate`` call (after the
data is generated), and client-updates per second are 100 x 10 over it.

The physical limit is the same arithmetic done as one centralized model: the
same MLP trained with batches of (clients per round x 10) = 1,000 samples for
the same number of steps (6 a round, 60 in all), gathering each batch from the
60,000 samples as the engines gather theirs.

- ``vectorized_over_sequential``: the vectorized engine's updates per second over
  the sequential engine's (goal: at least 8).
- ``vectorized_over_limit``: the vectorized engine's seconds per round over the
  centralized model's seconds per round (goal: at most 2).
- per engine ``updates_per_s`` and ``peak_mb``: the kernel's high-water mark of
  resident memory (``ru_maxrss``) of the engine's process; for the process
  engine, plus that of its largest worker (workers share the data pages they
  inherit, so this is a floor of the pool's total).

Every process uses ``--threads`` torch threads (default 1: the small matrices of
one client gain nothing from more, and the ratios are fairest with equal
threads); the process engine runs ``--workers`` processes (default: one per
core). The final global weights of every engine are compared with the
sequential engine's (``max_abs_diff``): the engines must agree.

Run: ``python benchmarks/simulation.py [--engines sequential,process,vectorized]
[--rounds R] [--threads T] [--workers W]``. Prints a line per engine, then one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedloom import ClientContext, fedavg, simulate
from fedloom.client import TorchClient

NUM_CLIENTS = 1_000
SAMPLES = 60
FEATURES = 784
CLASSES = 10
HIDDEN = 100
BATCH_SIZE = 10
CLIENTS_PER_ROUND = 100
LR = 0.05
SEED = 0
STEPS_PER_ROUND = SAMPLES // BATCH_SIZE


@cache
def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """60,000 seeded samples: Gaussian features, labels from a random linear teacher."""
    rng = np.random.default_rng(SEED)
    inputs = rng.standard_normal((NUM_CLIENTS * SAMPLES, FEATURES), dtype=np.float32)
    teacher = rng.standard_normal((FEATURES, CLASSES), dtype=np.float32)
    labels = (inputs @ teacher).argmax(axis=1).astype(np.int64)
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def make_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(SEED)
        return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


@cache
def _shared_model() -> nn.Module:
    return make_model()


def make_optimizer(parameters: object) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=LR)  # type: ignore[arg-type]


def client_fn(context: ClientContext) -> TorchClient:
    """Client i: samples [60 i, 60 i + 60) as views of the one dataset, the process's one model."""
    inputs, targets = dataset()
    start = context.partition_id * SAMPLES
    return TorchClient(
        _shared_model(),  # a client's fit loads the global weights into it first
        train=(inputs[start : start + SAMPLES], targets[start : start + SAMPLES]),
        optimizer=make_optimizer,
        local_epochs=1,
        batch_size=BATCH_SIZE,
        device=getattr(context, "device", "cpu"),
    )


def run_engine(
    engine: str, rounds: int, workers: int | None, weights_path: str
) -> dict[str, float]:
    """One engine's whole federation, in this process."""
    dataset()
    start = time.perf_counter()
    result = simulate(
        client_fn,
        num_clients=NUM_CLIENTS,
        rounds=rounds,
        strategy=fedavg(fraction_fit=CLIENTS_PER_ROUND / NUM_CLIENTS, fraction_evaluate=0),
        seed=SEED,
        engine=engine,
        device="cpu",
        workers=workers,
    )
    seconds = time.perf_counter() - start
    flat = np.concatenate([result.weights[name].reshape(-1) for name in result.weights])
    np.save(weights_path, flat, allow_pickle=False)
    return {"seconds": seconds, "peak_mb": _peak_mb()}


def run_centralized(rounds: int) -> dict[str, float]:
    """The physical limit: one model, batches of clients-per-round x batch-size samples."""
    inputs, targets = dataset()
    model = make_model()
    optimizer = make_optimizer(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)
    batch = CLIENTS_PER_ROUND * BATCH_SIZE
    start = time.perf_counter()
    for _ in range(rounds * STEPS_PER_ROUND):
        chosen = torch.randint(len(targets), (batch,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs[chosen]), targets[chosen])
        loss.backward()
        optimizer.step()
    return {"seconds": time.perf_counter() - start, "peak_mb": _peak_mb()}


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024  # kilobytes on Linux


def _warm_up() -> None:
    """Pay torch's one-time imports (the first optimizer imports torch._dynamo) before timing."""
    import torch.func  # the vectorized engine's

    model = make_model()
    optimizer = make_optimizer(model.parameters())
    model(torch.zeros(1, FEATURES)).sum().backward()
    optimizer.step()
    dataset()


def _child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    _warm_up()
    if args.child == "centralized":
        figures = run_centralized(args.rounds)
    else:
        figures = run_engine(args.child, args.rounds, args.workers, args.weights)
    print(json.dumps(figures))


def _spawn(name: str, args: argparse.Namespace, weights: Path) -> dict[str, float] | None:
    command = [sys.executable, __file__, "--child", name, "--rounds", str(args.rounds)]
    command += ["--threads", str(args.threads), "--weights", str(weights)]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s)
    if done.returncode != 0:
        print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=None, help="comma-separated (default: all installed)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    engines = ["sequential", "process", "vectorized"]
    if importlib.util.find_spec("ray") is not None:
        engines.append("ray")
    if args.engines:
        engines = args.engines.split(",")
    updates = CLIENTS_PER_ROUND * args.rounds
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as folder:
        central = _spawn("centralized", args, Path(folder) / "centralized.npy")
        assert central is not None, "the centralized baseline failed"
        limit_s = central["seconds"] / args.rounds
        print(
            f"centralized limit: {limit_s * 1000:8.1f} ms/round "
            f"({STEPS_PER_ROUND} steps of {CLIENTS_PER_ROUND * BATCH_SIZE} samples), "
            f"peak {central['peak_mb']:.0f} MB"
        )
        reference: np.ndarray | None = None
        for engine in engines:
            path = Path(folder) / f"{engine}.npy"
            result = _spawn(engine, args, path)
            if result is None:
                figures[engine] = None
                continue
            weights = np.load(path, allow_pickle=False)
            if reference is None:
                reference = weights
            difference = float(np.abs(weights - reference).max())
            per_round = result["seconds"] / args.rounds
            figures[engine] = {
                "updates_per_s": round(updates / result["seconds"], 1),
                "peak_mb": round(result["peak_mb"], 1),
                "s_per_round": round(per_round, 4),
                "max_abs_diff": difference,
            }
            print(
                f"{engine:>11}: {updates / result['seconds']:9.1f} client-updates/s, "
                f"{per_round * 1000:8.1f} ms/round, peak {result['peak_mb']:.0f} MB, "
                f"weights differ from {engines[0]}'s by {difference:.2e}"
            )
    summary: dict[str, object] = {
        "vectorized_over_sequential": _ratio(figures, "vectorized", "sequential", "updates_per_s"),
        "vectorized_over_limit": None,
        **figures,
        "limit_s_per_round": round(limit_s, 4),
        "threads": args.threads,
        "cpus": os.cpu_count(),
    }
    vectorized = figures.get("vectorized")
    if isinstance(vectorized, dict):
        summary["vectorized_over_limit"] = round(vectorized["s_per_round"] / limit_s, 3)
    print(json.dumps(summary))


def _ratio(figures: dict[str, object], top: str, bottom: str, key: str) -> float | None:
    upper, lower = figures.get(top), figures.get(bottom)
    if not isinstance(upper, dict) or not isinstance(lower, dict):
        return None
    return round(upper[key] / lower[key], 2)


if __name__ == "__main__":
    main()
