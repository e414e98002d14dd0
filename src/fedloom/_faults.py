"""A test hook that makes a process announce and pause at a named point of a round.

Set ``FEDLOOM_FAULT_AT`` to ``phase:round`` pairs separated by commas (e.g.
``aggregation:3``). When the process reaches one, it prints
``FEDLOOM-FAULT-POINT <phase> <round>`` on stdout (flushed) and sleeps
``FEDLOOM_FAULT_PAUSE_S`` seconds (default 2), so a test can SIGKILL it at a
random moment inside that phase. The phases are ``broadcast`` (the round's
fit tasks are handed to the clients: queued for download over gRPC, about to
run in process), ``collection`` (the first result has arrived), ``aggregation``
(every result is in, the new weights are being computed) and ``checkpoint``
(the round's files are written, its transaction is not yet committed).
Without the variable this is a no-op.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping

from fedloom.core import FitIns

__all__ = ["PHASES", "broadcast_point", "fault_point"]

PHASES = ("broadcast", "collection", "aggregation", "checkpoint")


def fault_point(phase: str, server_round: int) -> None:
    """Announce and pause here if ``FEDLOOM_FAULT_AT`` names ``phase:server_round``."""
    wanted = os.environ.get("FEDLOOM_FAULT_AT")
    if not wanted or f"{phase}:{server_round}" not in wanted.split(","):
        return
    sys.stdout.write(f"FEDLOOM-FAULT-POINT {phase} {server_round}\n")
    sys.stdout.flush()
    time.sleep(float(os.environ.get("FEDLOOM_FAULT_PAUSE_S", "2")))


def broadcast_point(tasks: Mapping[str, object]) -> None:
    """`fault_point` ``broadcast`` for a channel that has just handed out `tasks`.

    The round is read from the fit tasks' ``config["server_round"]``; evaluate
    tasks (and no tasks) are not a broadcast.
    """
    if not os.environ.get("FEDLOOM_FAULT_AT"):
        return
    for task in tasks.values():
        if isinstance(task, FitIns):
            server_round = task.config.get("server_round")
            if isinstance(server_round, int):
                fault_point("broadcast", server_round)
        return
