"""A progress bar over the rounds of a run, with the latest metrics, and one log line per round.

In a terminal, `ProgressBar` shows a ``rich`` bar whose description holds the
round and a few metrics, and prints a plain line per round above it. Where
output is not a terminal (pipes, CI logs, pytest), the bar is off and only the
plain lines are printed, e.g. ``round 3/20  central.accuracy=0.9250  central.loss=0.2711``.
A run with differential privacy always shows the epsilon spent so far
(``privacy.epsilon``, ``privacy.local_epsilon``) after the other metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedloom.core import Scalar, Weights
from fedloom.server import Callback, RoundRecord

if TYPE_CHECKING:
    from fedloom.server import RunResult

__all__ = ["ProgressBar", "format_metrics"]

_PREFIX_ORDER = ("central.", "evaluate.", "fit.")
_NAME_ORDER = ("accuracy", "loss")
_ALWAYS = ("privacy.epsilon", "privacy.local_epsilon")
"""Shown whenever recorded, beyond `limit`: what a private run has spent."""


def format_metrics(
    metrics: Mapping[str, Scalar], keys: Sequence[str] | None = None, *, limit: int = 4
) -> str:
    """``key=value`` pairs of the numeric metrics, most telling first.

    Without `keys`, central metrics come before federated evaluation and training
    ones, and accuracy and loss before the rest; at most `limit` are shown, plus
    the privacy budget spent (``privacy.epsilon``, ``privacy.local_epsilon``) when recorded.

    Args:
        metrics: a round's metrics.
        keys: the metrics to show, in order (missing ones are skipped).
        limit: the most metrics to show when `keys` is not given.

    Example:
        >>> format_metrics({"fit.loss": 0.5, "central.accuracy": 0.925, "central.loss": 0.25})
        'central.accuracy=0.9250  central.loss=0.2500  fit.loss=0.5000'
    """
    numeric = {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    chosen = [key for key in keys if key in numeric] if keys is not None else _ranked(numeric)
    if keys is None:
        chosen = chosen[:limit]
        chosen += [key for key in _ALWAYS if key in numeric and key not in chosen]
    return "  ".join(f"{key}={_number(numeric[key])}" for key in chosen)


def _ranked(keys: Mapping[str, float]) -> list[str]:
    def rank(key: str) -> tuple[int, int, str]:
        prefix = next((i for i, p in enumerate(_PREFIX_ORDER) if key.startswith(p)), 3)
        name = key.rsplit(".", 1)[-1]
        return prefix, _NAME_ORDER.index(name) if name in _NAME_ORDER else 2, key

    return sorted(keys, key=rank)


def _number(value: float) -> str:
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.4g}"


class ProgressBar(Callback):
    """Shows the run's progress: a bar over `rounds` rounds and a line per round.

    Close it (`close`, or use it as a context manager) if the run may raise,
    so the terminal is restored; a finished run closes it in `on_run_end`.

    Args:
        rounds: the most rounds the run will do (the bar's total).
        metrics: the metric keys to show; default: up to `limit`, central ones first.
        limit: how many metrics to show when `metrics` is not given.
        console: where to print (default: standard output).

    Example:
        >>> from fedloom.server import RoundRecord
        >>> bar = ProgressBar(rounds=2, console=Console(force_terminal=False, width=200))
        >>> stop = bar.on_round_end(RoundRecord(server_round=1, metrics={"central.accuracy": 0.5}),
        ...                         Weights({}))
        round 1/2  central.accuracy=0.5000
    """

    def __init__(
        self,
        *,
        rounds: int,
        metrics: Sequence[str] | None = None,
        limit: int = 4,
        console: Console | None = None,
    ) -> None:
        self._rounds = rounds
        self._keys = metrics
        self._limit = limit
        self._console = console if console is not None else Console()
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._console,
            disable=not self._console.is_terminal,
            transient=False,
        )
        self._task = self._progress.add_task(f"round 0/{rounds}", total=rounds)
        self._started = False

    def on_round_start(self, server_round: int) -> None:
        if not self._started:
            self._progress.start()
            self._started = True

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        line = f"round {record.server_round}/{self._rounds}"
        short = format_metrics(record.metrics, self._keys, limit=min(self._limit, 2))
        self._progress.update(
            self._task,
            completed=record.server_round,
            description=f"{line}  {short}".rstrip(),
            refresh=self._started,
        )
        text = format_metrics(record.metrics, self._keys, limit=self._limit)
        self._progress.console.print(
            f"{line}  {text}".rstrip(), markup=False, highlight=False, soft_wrap=True
        )
        return False

    def on_run_end(self, result: RunResult) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live bar (safe to call more than once)."""
        if self._started:
            self._progress.stop()
            self._started = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
