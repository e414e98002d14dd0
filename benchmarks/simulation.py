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

Each engine and the centralized model run ``--repeat`` times at each of the
``--threads`` torch thread counts (default: 1 and one per core), alternating
(the machine may be shared: load then slows every one alike), and the fastest
run of each counts, whatever its thread count; peak memory is the highest of
its runs. So each is measured at its best on this machine: the sequential
engine's small matrices run fastest on one thread (more threads only add
synchronization), the vectorized engine's and the centralized model's large
products may gain from more. The JSON records each one's best thread count
(``threads``). The process engine runs ``--workers`` processes (default: one
per core). The final global weights of every run are compared with those of the
sequential engine's run before it (``max_abs_diff``, the largest difference):
the engines must agree.

Ray is measured when asked for (``--engines sequential,ray,vectorized``): starting a
local Ray instance costs more than this whole workload on a small machine.

Run: ``python benchmarks/simulation.py [--engines sequential,process,vectorized]
[--rounds R] [--threads 1,2] [--workers W]``. Prints a line per engine, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _workload import (
    BATCH_SIZE,
    CLIENTS_PER_ROUND,
    FEATURES,
    NUM_CLIENTS,
    SAMPLES,
    SEED,
    STEPS_PER_ROUND,
    dataset,
    make_model,
    make_optimizer,
)
from torch import nn

from fedloom import ClientContext, fedavg, simulate
from fedloom.client import TorchClient


@cache
def _shared_model() -> nn.Module:
    return make_model()


LOSS = nn.CrossEntropyLoss()
"""One loss object for every client, as one builds a model and a loss once per process."""


def client_fn(context: ClientContext) -> TorchClient:
    """Client i: samples [60 i, 60 i + 60) as views of the one dataset, the process's one model."""
    inputs, targets = dataset()
    start = context.partition_id * SAMPLES
    return TorchClient(
        _shared_model(),  # a client's fit loads the global weights into it first
        train=(inputs[start : start + SAMPLES], targets[start : start + SAMPLES]),
        optimizer=make_optimizer,
        loss_fn=LOSS,
        local_epochs=1,
        batch_size=BATCH_SIZE,
        device=getattr(context, "device", "cpu"),
    )


def run_engine(
    engine: str, rounds: int, workers: int | None, weights_path: str
) -> dict[str, float]:
    """One engine's whole federation, in this process."""
    dataset()
    start, cpu_start = time.perf_counter(), time.process_time()
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
    cpu_s = time.process_time() - cpu_start
    flat = np.concatenate([result.weights[name].reshape(-1) for name in result.weights])
    np.save(weights_path, flat, allow_pickle=False)
    return {"seconds": seconds, "cpu_s": cpu_s, "peak_mb": _peak_mb()}


def run_centralized(rounds: int) -> dict[str, float]:
    """The physical limit: one model, batches of clients-per-round x batch-size samples."""
    inputs, targets = dataset()
    model = make_model()
    optimizer = make_optimizer(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)
    batch = CLIENTS_PER_ROUND * BATCH_SIZE
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(rounds * STEPS_PER_ROUND):
        chosen = torch.randint(len(targets), (batch,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs[chosen]), targets[chosen])
        loss.backward()
        optimizer.step()
    return {
        "seconds": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
        "peak_mb": _peak_mb(),
    }


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024  # kilobytes on Linux


def _warm_up() -> None:
    """Pay one-time imports before timing: torch's (the first optimizer imports
    torch._dynamo) and the engines' own modules, which `simulate` imports on first use."""
    import torch.func  # the vectorized engine's

    import fedloom.simulation.processes
    import fedloom.simulation.vectorized  # noqa: F401

    model = make_model()
    optimizer = make_optimizer(model.parameters())
    model(torch.zeros(1, FEATURES)).sum().backward()
    optimizer.step()
    dataset()


def _child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads[0])
    _warm_up()
    if args.child == "centralized":
        figures = run_centralized(args.rounds)
    else:
        figures = run_engine(args.child, args.rounds, args.workers, args.weights)
    print(json.dumps(figures))


def _spawn(
    name: str, args: argparse.Namespace, weights: Path, threads: int
) -> dict[str, float] | None:
    """One run of `name` (an engine or "centralized") in a child process with `threads` threads."""
    command = [sys.executable, __file__, "--child", name, "--rounds", str(args.rounds)]
    command += ["--threads", str(threads), "--weights", str(weights)]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    count = str(threads)  # BLAS pools too: idle BLAS threads spin on a shared machine
    env = {**os.environ, "OMP_NUM_THREADS": count, "OPENBLAS_NUM_THREADS": count}
    env["MKL_NUM_THREADS"] = count
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=args.timeout_s, env=env, check=False
    )
    if done.returncode != 0:
        print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return {**figures, "threads": threads}


def thread_counts(text: str | None) -> list[int]:
    """``"1,2"`` as ``[1, 2]``; None: 1 and one per core (just 1 on a one-core machine)."""
    if text is None:
        return sorted({1, os.cpu_count() or 1})
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise SystemExit(f"--threads {text!r}: expected positive integers separated by commas")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines", default=None, help="comma-separated (default: sequential,process,vectorized)"
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=thread_counts,
        default=None,
        help="torch thread counts to try, comma-separated (default: 1 and one per core)",
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is None:
        args.threads = thread_counts(None)
    if args.child:
        _child(args)
        return

    engines = ["sequential", "process", "vectorized"]  # Ray on request: its start costs more
    if args.engines:
        engines = args.engines.split(",")
    updates = CLIENTS_PER_ROUND * args.rounds
    best: dict[str, dict[str, Any]] = {}
    differences: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        runs = [(threads, name) for threads in args.threads for name in ["centralized", *engines]]
        for _ in range(args.repeat):  # alternating, so load on the machine hits all alike
            for threads, name in runs:
                path = Path(folder) / f"{name}.npy"
                result = _spawn(name, args, path, threads)
                if result is None:
                    continue
                best[name] = keep_best(best.get(name), result)
                if name != "centralized":  # against the first engine's run just before
                    weights = np.load(path, allow_pickle=False)
                    reference = np.load(Path(folder) / f"{engines[0]}.npy", allow_pickle=False)
                    difference = float(np.abs(weights - reference).max())
                    differences[name] = max(differences.get(name, 0.0), difference)
    if "centralized" not in best:
        raise SystemExit("the centralized baseline failed")
    limit_s = best["centralized"]["seconds"] / args.rounds
    print(
        f"centralized limit: {limit_s * 1000:8.1f} ms/round "
        f"({STEPS_PER_ROUND} steps of {CLIENTS_PER_ROUND * BATCH_SIZE} samples; "
        f"{best['centralized']['cpu_s'] / args.rounds * 1000:.1f} ms CPU, "
        f"{best['centralized']['threads']} thread(s)), peak {best['centralized']['peak_mb']:.0f} MB"
    )
    figures: dict[str, object] = {}
    for engine in engines:
        result = best.get(engine)
        if result is None:
            figures[engine] = None
            print(f"{engine:>11}: failed")
            continue
        per_round = result["seconds"] / args.rounds
        figures[engine] = {
            "updates_per_s": round(updates / result["seconds"], 1),
            "peak_mb": round(result["peak_mb"], 1),
            "s_per_round": round(per_round, 4),
            "cpu_s_per_round": round(result["cpu_s"] / args.rounds, 4),
            "max_abs_diff": differences.get(engine),
            "threads": result["threads"],
        }
        print(
            f"{engine:>11}: {updates / result['seconds']:9.1f} client-updates/s, "
            f"{per_round * 1000:8.1f} ms/round ({result['cpu_s'] / args.rounds * 1000:.1f} ms "
            f"CPU in its main process, {result['threads']} thread(s)), peak "
            f"{result['peak_mb']:.0f} MB, weights differ from {engines[0]}'s by "
            f"{differences.get(engine, float('nan')):.2e}"
        )
    summary: dict[str, object] = {
        "vectorized_over_sequential": _ratio(figures, "vectorized", "sequential", "updates_per_s"),
        "vectorized_over_limit": None,
        **figures,
        "limit_s_per_round": round(limit_s, 4),
        "limit_threads": best["centralized"]["threads"],
        "threads_tried": args.threads,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
    }
    vectorized = figures.get("vectorized")
    if isinstance(vectorized, dict):
        summary["vectorized_over_limit"] = round(vectorized["s_per_round"] / limit_s, 3)
    print(json.dumps(summary))


def keep_best(best: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """The faster of two runs' figures, with the higher of their peak memories."""
    if best is None:
        return result
    fastest = result if result["seconds"] < best["seconds"] else best
    return {**fastest, "peak_mb": max(best["peak_mb"], result["peak_mb"])}


def _ratio(figures: dict[str, object], top: str, bottom: str, key: str) -> float | None:
    upper, lower = figures.get(top), figures.get(bottom)
    if not isinstance(upper, dict) or not isinstance(lower, dict):
        return None
    return round(upper[key] / lower[key], 2)


if __name__ == "__main__":
    main()
