"""fedloom's vectorized engine against Flower's simulation, on the same workload and machine.

Issue 5's goal: fedloom simulates at least 20 times Flower's client-updates per
second (``fedloom_over_flower``), in at most half its peak memory
(``memory_ratio`` = fedloom's peak / Flower's peak).

The workload is ``_workload.py``'s (1,000 clients of 60 MNIST-sized samples, a
784-100-10 MLP, 1 epoch at batch size 10 with SGD, 100 clients a round). fedloom
runs it through ``simulation.py``'s own child process (``_spawn``: the engine's
``simulate`` call, timed after the data is built); Flower runs
``flower_simulation.py`` (Ray backend, timed over the whole ``run_simulation``
call, which includes Ray's start-up and each actor loading its data: Flower pays
them in every simulation) with the interpreter of its own virtual environment,
which this benchmark needs set up once, outside the repository:

    python3.11 -m venv /work/flwr-venv && /work/flwr-venv/bin/pip install torch==2.13.0
    /work/flwr-venv/bin/pip install "flwr[simulation]" psutil

Peak memory is measured the same way for both: a thread of this process sums the
resident memory (RSS) of all its descendants (the fedloom child, or the Flower
process with Ray's GCS, raylet and workers) every 50 ms with psutil and keeps the
maximum (``_process_tree.TreePeak``); this process itself is not counted.
fedloom's child's own ``ru_maxrss`` is printed beside it.

The two alternate: fedloom ``--repeat`` times (default 3) and Flower
``--flower-repeat`` times (default 1, since one Flower run takes about half a
minute to minutes on 2 cores); the fastest run of each counts, peak memory is
the highest of its runs. Flower's steady rounds (rounds 2 onwards, without its
start-up) are also compared (``fedloom_over_flower_later_rounds``), and the
training loss of both final models on all 60,000 samples is printed, to show
both did the same training.

Run (from the repository root): ``PYTHONPATH=src python benchmarks/flower_comparison.py
[--rounds R] [--repeat N] [--flower-repeat N] [--flower-api message|numpyclient]
[--flower-python PATH]``. Prints a line per system, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _process_tree import TreePeak
from _workload import CLIENTS_PER_ROUND, dataset, make_model
from torch import nn

from simulation import _spawn, keep_best

FLOWER_SCRIPT = Path(__file__).with_name("flower_simulation.py")
DEFAULT_FLOWER_PYTHON = "/work/flwr-venv/bin/python"
SETUP = (
    "python3.11 -m venv /work/flwr-venv && /work/flwr-venv/bin/pip install torch==2.13.0\n"
    '    /work/flwr-venv/bin/pip install "flwr[simulation]" psutil'
)


def run_fedloom(args: argparse.Namespace, weights: Path) -> dict[str, float]:
    """One run of fedloom's engine in simulation.py's child, its process tree sampled."""
    with TreePeak(include_root=False) as peak:
        figures = _spawn(args.engine, args, weights, args.threads)
    if figures is None:
        raise SystemExit(f"fedloom's {args.engine} engine failed (its error is above)")
    return {**figures, "ru_maxrss_mb": figures["peak_mb"], "peak_mb": peak.peak_mb}


def run_flower(args: argparse.Namespace, weights: Path) -> dict[str, Any]:
    """One run of flower_simulation.py in Flower's environment, its process tree sampled."""
    command = [args.flower_python, str(FLOWER_SCRIPT), "--rounds", str(args.rounds)]
    command += ["--api", args.flower_api, "--weights", str(weights)]
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    with TreePeak(include_root=False) as peak:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout_s, env=env, check=False
        )
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"the Flower run failed (exit {done.returncode}; its output is above)")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    figures: dict[str, Any] = json.loads(lines[-1])
    return {**figures, "own_peak_mb": figures["peak_mb"], "peak_mb": peak.peak_mb}


def global_loss(flat: np.ndarray[Any, Any] | None) -> float:
    """Cross-entropy of the model with these flat weights (None: the initial ones) on all data."""
    model = make_model()
    if flat is not None:
        torch.nn.utils.vector_to_parameters(torch.from_numpy(flat), model.parameters())
    inputs, labels = dataset()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(inputs), labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="fedloom runs; the best counts")
    parser.add_argument(
        "--flower-repeat", type=int, default=1, help="Flower runs (default 1: each is slow)"
    )
    parser.add_argument("--engine", default="vectorized", help="fedloom's engine")
    parser.add_argument("--flower-api", choices=["message", "numpyclient"], default="message")
    parser.add_argument("--flower-python", default=DEFAULT_FLOWER_PYTHON)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of fedloom's child")
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()
    args.workers = None  # simulation.py's child reads it (the process engine's pool size)
    if not Path(args.flower_python).is_file() or not os.access(args.flower_python, os.X_OK):
        raise SystemExit(
            f"no Flower interpreter at {args.flower_python}. Create Flower's virtual "
            f"environment (outside the repository) with:\n    {SETUP}\n"
            "or pass --flower-python PATH to an environment with flwr[simulation], torch "
            "and psutil."
        )

    best: dict[str, dict[str, Any] | None] = {"fedloom": None, "flower": None}
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: Path(folder) / f"{name}.npy" for name in best}
        for repeat in range(max(args.repeat, args.flower_repeat)):  # alternating
            if repeat < args.repeat:
                best["fedloom"] = keep_best(best["fedloom"], run_fedloom(args, paths["fedloom"]))
            if repeat < args.flower_repeat:
                best["flower"] = keep_best(best["flower"], run_flower(args, paths["flower"]))
        losses = {
            name: global_loss(np.load(path, allow_pickle=False)) for name, path in paths.items()
        }
    fedloom, flower = best["fedloom"], best["flower"]
    assert fedloom is not None
    assert flower is not None

    updates = CLIENTS_PER_ROUND * args.rounds
    fedloom_figures = {
        "engine": args.engine,
        "updates_per_s": round(updates / fedloom["seconds"], 1),
        "peak_mb": round(fedloom["peak_mb"], 1),
        "ru_maxrss_mb": round(fedloom["ru_maxrss_mb"], 1),
        "s_per_round": round(fedloom["seconds"] / args.rounds, 4),
        "loss": round(losses["fedloom"], 4),
    }
    flower_figures = {
        "api": flower["api"],
        "flwr_version": flower["flwr_version"],
        "updates_per_s": round(updates / flower["seconds"], 1),
        "peak_mb": round(flower["peak_mb"], 1),
        "s_per_round": round(flower["seconds"] / args.rounds, 4),
        "first_round_s": flower["first_round_s"],
        "later_rounds_s_per_round": flower["later_rounds_s_per_round"],
        "results": flower["results"],
        "loss": round(losses["flower"], 4),
    }
    print(
        f"fedloom ({args.engine}): {fedloom_figures['updates_per_s']:9.1f} client-updates/s, "
        f"{fedloom_figures['s_per_round'] * 1000:8.1f} ms/round, "
        f"peak {fedloom['peak_mb']:.0f} MB (process tree; ru_maxrss {fedloom['ru_maxrss_mb']:.0f}"
        f" MB), loss after {args.rounds} rounds {losses['fedloom']:.4f}"
    )
    later = flower["later_rounds_s_per_round"]
    print(
        f"flower ({flower['api']} API, flwr {flower['flwr_version']}): "
        f"{flower_figures['updates_per_s']:9.1f} client-updates/s, "
        f"{flower_figures['s_per_round'] * 1000:8.1f} ms/round over the whole call "
        f"(rounds 2 on: {later * 1000 if later else float('nan'):.1f} ms/round), "
        f"peak {flower['peak_mb']:.0f} MB (process tree), loss after {args.rounds} rounds "
        f"{losses['flower']:.4f} (initial model: {global_loss(None):.4f})"
    )
    speed = round(fedloom_figures["updates_per_s"] / flower_figures["updates_per_s"], 2)
    memory = round(fedloom["peak_mb"] / flower["peak_mb"], 3)
    print(
        f"fedloom / Flower: {speed}x the client-updates/s (goal >= 20: "
        f"{'met' if speed >= 20 else 'not met'}), {memory} of the peak memory (goal <= 0.5: "
        f"{'met' if memory <= 0.5 else 'not met'})"
    )
    summary = {
        "fedloom_over_flower": speed,
        "memory_ratio": memory,
        "fedloom_over_flower_later_rounds": (
            round(later / fedloom_figures["s_per_round"], 2) if later else None
        ),
        "fedloom": fedloom_figures,
        "flower": flower_figures,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "flower_repeat": args.flower_repeat,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
