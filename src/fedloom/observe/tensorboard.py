"""TensorBoard event files for a run: global metrics, each client's metrics, durations, failures.

`TensorBoardLogger` is a `Callback` that writes with TensorBoard's own event-file
writer (``tensorboard.summary.writer``, the one ``torch.utils.tensorboard`` uses;
it needs neither torch nor TensorFlow) into one folder per run, so ``tensorboard
--logdir runs/`` lists every run. The step of every scalar is the server round. Tags:

- ``<group>/<name>`` for each numeric global metric ``<group>.<name>`` of a round
  (``central/accuracy``, ``evaluate/loss``, ``fit/loss``, ``staleness/mean``);
- ``round/duration_s``, ``round/num_results`` and ``round/num_failures``;
- ``client/<client id>/<kind>/<name>`` for each numeric metric a client reported
  in a ``fit`` or ``evaluate`` task (PyFed's per-client history), with
  ``.../duration_s``, ``.../num_examples`` and, for asynchronous schedules,
  ``.../staleness``;
- ``client/<client id>/<kind>/failed`` (1.0) for each round a client's task
  failed, and the reasons as text under ``failures``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from fedloom.core import Scalar, Weights
from fedloom.server import Callback, ClientOutcome, History, RoundRecord

if TYPE_CHECKING:
    from fedloom.server import RunResult

__all__ = ["TensorBoardLogger", "metric_tag"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/]")


def metric_tag(key: str) -> str:
    """The TensorBoard tag of a global metric key: its first dot becomes a slash.

    Example:
        >>> metric_tag("central.accuracy")
        'central/accuracy'
        >>> metric_tag("loss")
        'loss'
    """
    return _clean(key.replace(".", "/", 1))


def _clean(text: str) -> str:
    """Characters TensorBoard shows badly (spaces, quotes, ...) become ``_``."""
    return _UNSAFE.sub("_", text)


def _numeric(value: Scalar) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class TensorBoardLogger(Callback):
    """Writes a run's metrics as TensorBoard event files into `logdir` (created if missing).

    Args:
        logdir: the folder for this run's event files (typically the run folder).
        flush_secs: how often pending events are written to disk; every round's
            events are also flushed when the round ends.

    Example:
        >>> import tempfile
        >>> logger = TensorBoardLogger(tempfile.mkdtemp())
        >>> logger.on_round_end(RoundRecord(server_round=1, metrics={"fit.loss": 0.5}),
        ...                     Weights({}))
        False
        >>> logger.close()
    """

    def __init__(self, logdir: str | Path, *, flush_secs: int = 10) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._proto: Any = SimpleNamespace(
            Event=Event, SessionLog=SessionLog, Summary=Summary, text_pb=text_pb
        )
        self._file_writer: Any = EventFileWriter
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._flush_secs = flush_secs
        self._open: Any = None
        self._purge_step: int | None = None

    def _add(self, summary: Any, step: int) -> None:
        """Write one summary at `step`, opening the event file at the first one."""
        proto = self._proto
        if self._open is None:
            self._open = self._file_writer(str(self.logdir), flush_secs=self._flush_secs)
            if self._purge_step is not None:  # hide what a killed run wrote past this step
                start = proto.SessionLog(status=proto.SessionLog.START)
                self._open.add_event(
                    proto.Event(wall_time=time.time(), step=self._purge_step, session_log=start)
                )
        self._open.add_event(proto.Event(wall_time=time.time(), step=step, summary=summary))

    def _scalar(self, tag: str, value: float, step: int) -> None:
        summary = self._proto.Summary
        self._add(summary(value=[summary.Value(tag=tag, simple_value=float(value))]), step)

    def on_resume(self, history: History, weights_of: Callable[[int], Weights]) -> None:
        """Hide the events a killed run wrote after its last recorded round.

        TensorBoard drops the events of steps >= the purge step written before it, so a
        round that ran partly before the crash and again after it is shown once.
        """
        last = max((record.server_round for record in history), default=-1)
        self.close()
        self._purge_step = last + 1

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        step = record.server_round
        for key, value in record.metrics.items():
            number = _numeric(value)
            if number is not None:
                self._scalar(metric_tag(key), number, step)
        if record.server_round > 0:  # round 0 is the central evaluation of the initial weights
            self._scalar("round/duration_s", record.duration_s, step)
            self._scalar("round/num_results", record.num_results, step)
            self._scalar("round/num_failures", len(record.failures), step)
        if record.failures:
            lines = [f"- `{client_id}`: {reason}" for client_id, reason in record.failures.items()]
            self._add(self._proto.text_pb("failures", "\n".join(lines)), step)
        if self._open is not None:
            self._open.flush()
        return False

    def on_client_result(self, outcome: ClientOutcome) -> None:
        prefix = f"client/{_clean(outcome.client_id)}"
        step, kind = outcome.server_round, _clean(outcome.kind)
        if outcome.failure is not None:
            self._scalar(f"{prefix}/{kind}/failed", 1.0, step)
            return
        for key, value in outcome.metrics.items():
            number = _numeric(value)
            if number is not None:
                self._scalar(f"{prefix}/{kind}/{_clean(key)}", number, step)
        self._scalar(f"{prefix}/{kind}/duration_s", outcome.duration_s, step)
        self._scalar(f"{prefix}/{kind}/num_examples", outcome.num_examples, step)
        if outcome.staleness is not None:
            self._scalar(f"{prefix}/{kind}/staleness", outcome.staleness, step)

    def on_run_end(self, result: RunResult) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event file (safe to call more than once)."""
        if self._open is not None:
            self._open.close()
            self._open = None
