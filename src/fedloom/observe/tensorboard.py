"""TensorBoard event files for a run: global metrics, each client's metrics, durations, failures.

`TensorBoardLogger` is a `Callback` that writes, with tensorboardX's `SummaryWriter`
(a dependency of fedloom that needs only numpy and protobuf), into one folder per
run, so ``tensorboard --logdir runs/`` lists every run. The step of every scalar is
the server round. Tags:

- ``<group>/<name>`` for each numeric global metric ``<group>.<name>`` of a round
  (``central/accuracy``, ``evaluate/loss``, ``fit/loss``, ``staleness/mean``);
- ``round/duration_s``, ``round/num_results`` and ``round/num_failures``;
- ``client/<client id>/<kind>/<name>`` for each numeric metric a client reported
  in a fit or evaluate task (PyFed's per-client history), and
  ``client/<client id>/duration_s``, ``client/<client id>/num_examples``;
- ``client/<client id>/failed`` (1.0) for each round a client failed, and the
  reasons as text under ``failures``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedloom.core import Scalar, Weights
from fedloom.server import Callback, RoundRecord

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
        from tensorboardX import SummaryWriter

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer: Any = SummaryWriter(logdir=str(self.logdir), flush_secs=flush_secs)
        self._closed = False

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        step, now = record.server_round, time.time()
        for key, value in record.metrics.items():
            number = _numeric(value)
            if number is not None:
                self._writer.add_scalar(metric_tag(key), number, step, walltime=now)
        if record.server_round > 0:  # round 0 is the central evaluation of the initial weights
            self._writer.add_scalar("round/duration_s", record.duration_s, step, walltime=now)
            self._writer.add_scalar("round/num_results", record.num_results, step, walltime=now)
            self._writer.add_scalar("round/num_failures", len(record.failures), step, walltime=now)
        for client_id in record.failures:
            self._writer.add_scalar(f"client/{_clean(client_id)}/failed", 1.0, step, walltime=now)
        if record.failures:
            lines = [f"- `{client_id}`: {reason}" for client_id, reason in record.failures.items()]
            self._writer.add_text("failures", "\n".join(lines), step, walltime=now)
        self._writer.flush()
        return False

    def log_client(
        self,
        server_round: int,
        client_id: str,
        *,
        kind: str,
        metrics: Mapping[str, Scalar],
        num_examples: int | None = None,
        duration_s: float | None = None,
    ) -> None:
        """Write one client's result of `server_round` (a ``"fit"`` or ``"evaluate"`` task)."""
        prefix, now = f"client/{_clean(client_id)}", time.time()
        for key, value in metrics.items():
            number = _numeric(value)
            if number is not None:
                tag = f"{prefix}/{_clean(kind)}/{_clean(key)}"
                self._writer.add_scalar(tag, number, server_round, walltime=now)
        if kind == "fit" and duration_s is not None:
            self._writer.add_scalar(f"{prefix}/duration_s", duration_s, server_round, walltime=now)
        if kind == "fit" and num_examples is not None:
            self._writer.add_scalar(
                f"{prefix}/num_examples", num_examples, server_round, walltime=now
            )

    def on_run_end(self, result: RunResult) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event file (safe to call more than once)."""
        if not self._closed:
            self._writer.close()
            self._closed = True
