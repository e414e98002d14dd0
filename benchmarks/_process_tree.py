"""Peak resident memory of a process tree, sampled in a thread.

A framework that runs in several processes (Ray's GCS, raylet and worker
processes, a process pool) is not measured by one process's ``ru_maxrss``. This
module sums the resident set size (RSS) of a process and all its descendants
every ``interval_s`` (50 ms by default) with psutil, and keeps the highest sum.

What it measures: the peak of the summed RSS at the sampled instants. A spike
shorter than the interval can be missed, and pages shared between processes
(a shared library, a shared-memory object store, copy-on-write pages after a
fork) count once in each process that maps them, so for a many-process tree
the sum is an upper bound of the memory the tree really holds. Processes
started and ended between two samples are not seen.

It imports only psutil, so both the fedloom benchmarks and the Flower benchmark
(which runs in a virtual environment of its own) can use it.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

import psutil

__all__ = ["TreePeak", "tree_rss_mb"]

_MB = 1024 * 1024


def tree_rss_mb(root_pid: int, *, include_root: bool = True) -> float:
    """The summed RSS, in MiB, of a process and its descendants now.

    Args:
        root_pid: the process at the top of the tree.
        include_root: count the root's own RSS too; without it, only its descendants'.

    Returns:
        The sum in MiB (0 when the root has ended).
    """
    try:
        root = psutil.Process(root_pid)
        processes = root.children(recursive=True)
        if include_root:
            processes.append(root)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue  # ended (or not ours) between listing and reading
    return total / _MB


class TreePeak:
    """Samples a process tree's summed RSS in a thread and keeps the maximum.

    Use as a context manager around the work to measure; ``peak_mb`` holds the
    highest sum seen (one sample is taken on entry and one on exit, so even work
    shorter than the interval is seen at its ends).

    Args:
        root_pid: the top of the tree (default: this process).
        include_root: count the root's own RSS; pass False to measure only the
            children a process starts (e.g. a benchmark's child process).
        interval_s: seconds between samples.

    Example:
        >>> with TreePeak() as peak:
        ...     data = bytearray(50 * 1024 * 1024)
        >>> peak.peak_mb > 50
        True
    """

    def __init__(
        self, root_pid: int | None = None, *, include_root: bool = True, interval_s: float = 0.05
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self.include_root = include_root
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-peak", daemon=True)

    def sample(self) -> float:
        """Take one sample now, keep it if it is the highest; returns it."""
        now = tree_rss_mb(self.root_pid, include_root=self.include_root)
        self.samples += 1
        self.peak_mb = max(self.peak_mb, now)
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreePeak:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()
