"""The benchmarks' process-tree memory sampler, on real child processes.

benchmarks/ is not a package (its scripts are run by path), so the module is
loaded from its file. It needs psutil: the `bench` extra, which `dev` includes.
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

_MODULE_PATH = Path(__file__).parents[2] / "benchmarks" / "_process_tree.py"

# A process that holds HOLD_MB MiB of touched memory, starts CHILD (a copy of this
# code with its own HOLD_MB) when it is given, says "ready" once all hold their
# memory, and ends when its stdin closes.
_HOLDER = """
import subprocess, sys
hold = b"x" * (int(sys.argv[1]) * 1024 * 1024)
child = None
if len(sys.argv) > 2:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[3]],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
print("ready", flush=True)
sys.stdin.read()
if child is not None:
    child.stdin.close()
    child.wait(timeout=30)
"""


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_process_tree", _MODULE_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start_holder(hold_mb: int, grandchild_mb: int | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", _HOLDER, str(hold_mb)]
    if grandchild_mb is not None:
        command += [_HOLDER, str(grandchild_mb)]
    holder = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(holder.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=60):
            holder.kill()
            holder.wait(timeout=30)
            pytest.fail("the memory-holding child did not say ready within 60 s")
    assert holder.stdout.readline().strip() == "ready"
    return holder


def _stop_holder(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0


def test_tree_peak_counts_a_process_and_all_its_descendants() -> None:
    """A child holding 60 MiB whose own child holds 100 MiB: the tree holds over 160 MiB,
    the tree without its root over 100 MiB. Each holder is a bare Python (about 10 MiB
    more each), hence the upper bounds."""
    process_tree = _load()
    holder = _start_holder(60, grandchild_mb=100)

    try:
        with process_tree.TreePeak(holder.pid) as whole:
            pass
        with process_tree.TreePeak(holder.pid, include_root=False) as below:
            pass
    finally:
        _stop_holder(holder)

    assert 160 <= whole.peak_mb < 220
    assert 100 <= below.peak_mb < 130
    assert process_tree.tree_rss_mb(holder.pid) == 0.0  # ended, and reaped


def test_tree_peak_samples_in_its_thread_what_comes_and_goes_inside_the_block() -> None:
    """A child that holds 100 MiB only between entry and exit is seen by the thread alone."""
    process_tree = _load()

    with process_tree.TreePeak(interval_s=0.02) as peak:
        before = peak.peak_mb  # the entry sample: this process, no child yet
        holder = _start_holder(100)
        samples = peak.samples
        deadline = time.monotonic() + 30
        while peak.samples < samples + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        _stop_holder(holder)

    assert peak.samples >= samples + 2
    assert peak.peak_mb >= before + 100


def test_tree_peak_with_the_root_counts_the_roots_own_memory() -> None:
    process_tree = _load()
    own_mb = process_tree.tree_rss_mb(os.getpid(), include_root=True)

    with process_tree.TreePeak() as peak:
        pass

    assert own_mb > 5  # a Python interpreter's own pages
    assert peak.peak_mb >= own_mb * 0.9
    assert process_tree.tree_rss_mb(os.getpid(), include_root=False) <= peak.peak_mb


def test_tree_rss_of_an_ended_process_is_zero() -> None:
    process_tree = _load()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait(timeout=30)

    assert process_tree.tree_rss_mb(ended.pid) == 0.0


def test_tree_peak_rejects_a_non_positive_interval() -> None:
    process_tree = _load()

    with pytest.raises(ValueError, match="interval_s must be positive, got 0"):
        process_tree.TreePeak(interval_s=0)
