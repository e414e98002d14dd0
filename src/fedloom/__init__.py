"""fedloom: federated learning with one orchestrator for simulation and deployment.

A server runs rounds in which clients train one model on data they keep; the
server folds their results into new global weights. The subpackages:

- `fedloom.core`: weights, messages, the Client and Channel protocols, seeded rng.
- `fedloom.aggregators`: how updates combine (streaming weighted mean, ...).
- `fedloom.strategies`: samplers, server optimizers, presets such as `fedavg`.
- `fedloom.server`: the round loop, callbacks (stop rules, keep-best), history.
- `fedloom.client`: adapters for PyTorch, scikit-learn and plain functions.
- `fedloom.transport`: the safetensors codec and channels to clients.
- `fedloom.simulation`: `simulate`, whole federations in one process.
- `fedloom.data`: partitioners (iid, Dirichlet, shards, by key).
- `fedloom.store`: the run store (SQLite or PostgreSQL: rounds, results, checkpoints,
  resume) and the run folder (history.json, weights.safetensors).
- `fedloom.config`: TOML configs for the ``fedloom`` command.

- `fedloom.deployment`: `serve` and `connect`, the same federation over gRPC.

Only NumPy is needed to import it; frameworks load when their adapter is used.
"""

from typing import TYPE_CHECKING, Any

from fedloom.core import (
    Client,
    ClientContext,
    Config,
    EvaluateRes,
    FitRes,
    Metrics,
    Weights,
)
from fedloom.errors import ConfigError, FedloomError
from fedloom.server import EarlyStopping, History, KeepBest, RunResult, StopAfter, StopAtMetric
from fedloom.simulation import simulate
from fedloom.strategies import Strategy, fedavg

if TYPE_CHECKING:
    from fedloom.deployment import connect, serve

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClientContext",
    "Config",
    "ConfigError",
    "EarlyStopping",
    "EvaluateRes",
    "FedloomError",
    "FitRes",
    "History",
    "KeepBest",
    "Metrics",
    "RunResult",
    "StopAfter",
    "StopAtMetric",
    "Strategy",
    "Weights",
    "__version__",
    "connect",
    "fedavg",
    "serve",
    "simulate",
]


def __getattr__(name: str) -> Any:
    """`serve` and `connect` load gRPC on first use."""
    if name in ("serve", "connect"):
        try:
            from fedloom import deployment
        except ModuleNotFoundError as exc:
            if exc.name not in ("grpc", "google"):
                raise
            raise ImportError(
                f"fedloom.{name} needs gRPC, which is not installed. Install it with: "
                "pip install 'fedloom[grpc]'"
            ) from exc
        return getattr(deployment, name)
    raise AttributeError(f"module 'fedloom' has no attribute '{name}'")
