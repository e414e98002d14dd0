"""The one orchestrator: round loop, callbacks and history. It sees peers only through a Channel."""

from fedloom.server.callbacks import Callback, EarlyStopping, KeepBest, StopAfter, StopAtMetric
from fedloom.server.history import History, RoundRecord
from fedloom.server.orchestrator import EvaluateFn, Orchestrator, RunResult

__all__ = [
    "Callback",
    "EarlyStopping",
    "EvaluateFn",
    "History",
    "KeepBest",
    "Orchestrator",
    "RoundRecord",
    "RunResult",
    "StopAfter",
    "StopAtMetric",
]
