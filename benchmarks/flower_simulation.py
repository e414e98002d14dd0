"""The simulation benchmark's workload written for Flower's simulation, to compare with fedloom's.

The workload of ``benchmarks/simulation.py`` (``_workload.py``): 1,000 clients of
60 MNIST-sized samples (client i holds rows [60 i, 60 i + 60) of the seeded
dataset), a 784-100-10 MLP, 1 local epoch at batch size 10 with SGD (lr 0.05),
FedAvg with 100 clients a round and no federated evaluation, 10 rounds. It is
written the way Flower's documentation writes a simulation, with what Flower
itself offers, and runs in a virtual environment of its own, without fedloom:

    python3.11 -m venv /work/flwr-venv && /work/flwr-venv/bin/pip install torch==2.13.0
    /work/flwr-venv/bin/pip install "flwr[simulation]" psutil

(torch first, so that Flower's and Ray's requirements keep the same CPU build of
torch as fedloom's environment).

Two ways of writing it (``--api``):

- ``message`` (default): the API of Flower's current documentation (flwr 1.42):
  a ``ClientApp`` whose ``@app.train()`` function answers a ``Message`` holding an
  ``ArrayRecord``, and a ``ServerApp`` whose ``@app.main()`` runs
  ``flwr.serverapp.strategy.FedAvg(fraction_train=0.1, fraction_evaluate=0.0)``
  with ``strategy.start(...)``.
- ``numpyclient``: the API of the quickstart that fedloom's reference documents
  show: a ``NumPyClient`` (``get_parameters`` / ``fit``) made by
  ``client_fn(context)``, and a ``ServerApp(server_fn=...)`` returning
  ``ServerAppComponents`` with ``flwr.server.strategy.FedAvg(fraction_fit=0.1,
  fraction_evaluate=0)`` (Flower keeps it as its compatibility API).

In both, FedAvg is also given its minimum of clients a round (100) and of available
clients (all 1,000), as Flower's simulation tutorial does: without them the first
round samples 10% of the nodes registered so far (Flower registers the 1,000
supernodes while the server starts), e.g. 48 clients instead of 100.

Both run through ``flwr.simulation.run_simulation`` (deprecated in favour of the
``flwr run`` command, but still Flower's Python entry point for a simulation)
with 1,000 supernodes and the Ray backend: 1 CPU per client actor, the machine's
cores as Ray's CPUs (so one actor per core), torch at 1 thread per process (as
fedloom's benchmark). Each actor process builds the dataset once (cached), as a
Flower client loads its data; that, Ray's start-up and the actors' creation
happen inside the timed call, since a Flower user pays them every simulation.
Flower's telemetry and Ray's usage statistics are turned off (no network here).

What is measured:

- ``seconds``: the wall time of the whole ``run_simulation`` call (all rounds);
  ``updates_per_s`` = 100 clients x rounds / seconds, ``s_per_round`` = seconds / rounds;
- ``later_rounds_s_per_round``: the mean time of rounds 2 onwards (from a
  centralized-evaluation hook that only records the time), without start-up;
- ``peak_mb``: the peak memory of the WHOLE process tree. Ray's GCS server,
  raylet and worker processes are separate processes (children of this one), so
  a thread sums the resident memory (RSS) of this process and all its descendants
  with psutil every 50 ms and keeps the maximum (``_process_tree.TreePeak``).
  Pages shared between processes count in each, so this is an upper bound;
- ``results`` and ``failures``: the client results Flower's strategy reports
  having received, summed over rounds (all must arrive: 100 a round).

Run: ``/work/flwr-venv/bin/python benchmarks/flower_simulation.py [--rounds R]
[--api message|numpyclient] [--weights PATH]``. Its last line is one JSON object.
"""

# ruff: noqa: E402 (the environment is set before torch, flwr and Ray are imported)
from __future__ import annotations

import os

# Before torch and Ray start: one BLAS/OpenMP thread in this process and in every
# Ray worker (they inherit the environment), and no telemetry (no network here).
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse
import json
import logging
import re
import time
from collections import OrderedDict
from typing import Any

import flwr
import numpy as np
import torch
from _process_tree import TreePeak
from _workload import (
    BATCH_SIZE,
    CLIENTS_PER_ROUND,
    NUM_CLIENTS,
    SAMPLES,
    dataset,
    make_model,
    make_optimizer,
)
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import Client, ClientApp, NumPyClient
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FRACTION = CLIENTS_PER_ROUND / NUM_CLIENTS


# ---- the client side: the same in both APIs, as Flower's quickstart writes it ----


def load_partition(partition_id: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    """Client ``partition_id``'s 60 samples: rows [60 i, 60 i + 60) of the dataset."""
    inputs, labels = dataset()  # built once per process, then cached
    start = partition_id * SAMPLES
    part = TensorDataset(inputs[start : start + SAMPLES], labels[start : start + SAMPLES])
    return DataLoader(part, batch_size=BATCH_SIZE, shuffle=True)


def train(model: nn.Module, loader: DataLoader[tuple[torch.Tensor, ...]]) -> float:
    """1 local epoch of SGD; returns the mean training loss."""
    torch.set_num_threads(1)  # in each Ray worker process, as in fedloom's benchmark
    optimizer = make_optimizer(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total = 0.0
    for inputs, labels in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / len(loader)


# ---- the current documentation's Message API ----

message_client = ClientApp()


@message_client.train()
def message_train(msg: Message, context: Context) -> Message:
    """Train the received model on this node's partition; reply with the new arrays."""
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss = train(model, load_partition(int(context.node_config["partition-id"])))
    metrics = MetricRecord({"train_loss": loss, "num-examples": SAMPLES})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def message_server(rounds: int, on_round: Any) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=FRACTION,
            fraction_evaluate=0.0,
            min_train_nodes=CLIENTS_PER_ROUND,
            min_available_nodes=NUM_CLIENTS,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(make_model().state_dict()),
            num_rounds=rounds,
            evaluate_fn=lambda server_round, arrays: on_round(
                server_round, [a.numpy() for a in arrays.values()]
            ),
        )

    return app


# ---- the reference documents' NumPyClient API ----


class WorkloadClient(NumPyClient):  # type: ignore[misc]
    """A NumPyClient as in Flower's PyTorch quickstart."""

    def __init__(self, partition_id: int) -> None:
        self.model = make_model()
        self.loader = load_partition(partition_id)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
        return [value.cpu().numpy() for value in self.model.state_dict().values()]

    def set_parameters(self, parameters: list[np.ndarray[Any, Any]]) -> None:
        keys = self.model.state_dict().keys()
        state = OrderedDict({k: torch.tensor(v) for k, v in zip(keys, parameters, strict=True)})
        self.model.load_state_dict(state, strict=True)

    def fit(
        self, parameters: list[np.ndarray[Any, Any]], config: dict[str, Any]
    ) -> tuple[list[np.ndarray[Any, Any]], int, dict[str, Any]]:
        self.set_parameters(parameters)
        loss = train(self.model, self.loader)
        return self.get_parameters(config={}), SAMPLES, {"train_loss": loss}


def numpy_client_fn(context: Context) -> Client:
    return WorkloadClient(int(context.node_config["partition-id"])).to_client()


def numpy_server(rounds: int, on_round: Any) -> ServerApp:
    def server_fn(context: Context) -> ServerAppComponents:
        initial = [value.numpy() for value in make_model().state_dict().values()]
        strategy = LegacyFedAvg(
            fraction_fit=FRACTION,
            fraction_evaluate=0,
            min_fit_clients=CLIENTS_PER_ROUND,
            min_available_clients=NUM_CLIENTS,
            initial_parameters=ndarrays_to_parameters(initial),
            evaluate_fn=lambda server_round, parameters, config: on_round(server_round, parameters),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    return ServerApp(server_fn=server_fn)


# ---- measuring ----


class _ReplyCounter(logging.Handler):
    """Counts the results and failures Flower's strategy logs for each training round."""

    PATTERN = re.compile(r"aggregate_(?:train|fit): [Rr]eceived (\d+) results and (\d+) failures")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.results = 0
        self.failures = 0

    def emit(self, record: logging.LogRecord) -> None:
        found = self.PATTERN.search(record.getMessage())
        if found:
            self.results += int(found.group(1))
            self.failures += int(found.group(2))


def run(rounds: int, api: str, cpus: int) -> tuple[dict[str, Any], list[np.ndarray[Any, Any]]]:
    """One whole simulation; returns its figures and the final global weights."""
    round_ends: list[float] = []
    final: list[np.ndarray[Any, Any]] = []

    def on_round(server_round: int, arrays: list[np.ndarray[Any, Any]]) -> None:
        round_ends.append(time.perf_counter())  # round 0: before the first round
        final[:] = [np.array(a, copy=True) for a in arrays]

    if api == "message":
        server_app, client_app = message_server(rounds, on_round), message_client
    else:
        server_app, client_app = numpy_server(rounds, on_round), ClientApp(numpy_client_fn)
    backend_config: Any = {
        "init_args": {"num_cpus": cpus},
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    counter = _ReplyCounter()
    logging.getLogger("flwr").addHandler(counter)
    with TreePeak() as peak:
        start = time.perf_counter()
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=NUM_CLIENTS,
            backend_name="ray",
            backend_config=backend_config,
        )
        seconds = time.perf_counter() - start
    logging.getLogger("flwr").removeHandler(counter)
    later = np.diff(round_ends[1:]) if len(round_ends) > 2 else np.array([])
    figures = {
        "updates_per_s": round(CLIENTS_PER_ROUND * rounds / seconds, 1),
        "peak_mb": round(peak.peak_mb, 1),
        "s_per_round": round(seconds / rounds, 4),
        "rounds": rounds,
        "flwr_version": flwr.__version__,
        "api": api,
        "seconds": round(seconds, 3),
        "first_round_s": round(round_ends[1] - start, 3) if len(round_ends) > 1 else None,
        "later_rounds_s_per_round": round(float(later.mean()), 4) if later.size else None,
        "results": counter.results,
        "failures": counter.failures,
        "memory_samples": peak.samples,
        "cpus": cpus,
        "torch": torch.__version__,
    }
    return figures, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--api", choices=["message", "numpyclient"], default="message")
    parser.add_argument(
        "--cpus", type=int, default=os.cpu_count() or 1, help="Ray's CPUs (default: all cores)"
    )
    parser.add_argument("--weights", help="save the final global weights here (.npy, flat)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures, final = run(args.rounds, args.api, args.cpus)
    if args.weights and final:
        flat = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in final])
        np.save(args.weights, flat, allow_pickle=False)
    expected = CLIENTS_PER_ROUND * args.rounds
    print(
        f"flower ({args.api} API, flwr {flwr.__version__}): "
        f"{figures['updates_per_s']:9.1f} client-updates/s, "
        f"{figures['s_per_round'] * 1000:8.1f} ms/round over the whole call "
        f"({figures['first_round_s']} s to the end of round 1, then "
        f"{(figures['later_rounds_s_per_round'] or 0) * 1000:.1f} ms/round), "
        f"peak {figures['peak_mb']:.0f} MB (process tree), "
        f"{figures['results']}/{expected} results, {figures['failures']} failures"
    )
    print(json.dumps(figures))
    if figures["results"] != expected:
        raise SystemExit(f"Flower received {figures['results']} results; expected {expected}")


if __name__ == "__main__":
    main()
