"""The one orchestrator: round loop, callbacks and history. It sees peers only through a Channel."""

from fedloom.server.callbacks import Callback, EarlyStopping, KeepBest, StopAfter, StopAtMetric
from fedloom.server.history import ClientOutcome, History, RoundRecord
from fedloom.server.orchestrator import EvaluateFn, Orchestrator, ResumePoint, RunResult

__all__ = [
    "Callback",
    "ClientOutcome",
    "EarlyStopping",
    "EvaluateFn",
    "History",
    "KeepBest",
    "Orchestrator",
    "ResumePoint",
    "RoundRecord",
    "RunResult",
    "StopAfter",
    "StopAtMetric",
]
