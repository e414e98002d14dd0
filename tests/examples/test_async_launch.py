"""examples/async-launch at a reduced size: the README's `fedloom launch --nproc 4` command, run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "async-launch"
VERSIONS = 6
STEPS = ("before_download", "after_download", "before_upload", "after_upload")

pytestmark = pytest.mark.e2e


def test_async_launch_learns_digits_with_fedbuff_and_fires_the_client_hooks(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    done = subprocess.run(
        [sys.executable, "-m", "fedloom.cli.main", "launch", "--nproc", "4",
         "--log-dir", str(tmp_path), str(EXAMPLE / "train.py"),
         "--versions", str(VERSIONS), "--train-size", "1200"],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 4 processes finished" in done.stdout
    server = (tmp_path / "rank0.log").read_text()
    versions = re.findall(r"^version (\d+): accuracy=([\d.]+)", server, re.MULTILINE)
    assert [int(v) for v, _ in versions] == list(range(VERSIONS + 1))  # versions 0..6
    assert float(versions[0][1]) < 0.2  # the untrained model: chance is 0.1
    final = re.search(r"^final accuracy ([\d.]+) after 6 versions$", server, re.MULTILINE)
    assert final is not None, server
    assert float(final.group(1)) > 0.6  # measured 0.855 on 1,200 training images
    assert "staleness.max=" in server  # asynchronous: each version records its staleness
    for rank in (1, 2, 3):
        log = (tmp_path / f"rank{rank}.log").read_text()
        fired = re.search(r"^rank\d: hooks fired (.*); ended: (.*)$", log, re.MULTILINE)
        assert fired is not None, log
        counts = dict(pair.split("=") for pair in fired.group(1).split())
        assert all(int(counts.get(step, "0")) >= 1 for step in STEPS), fired.group(0)
        assert f"rank{rank}: uploaded an update trained from version" in log
        # StopAtVersion ends a client after its upload for the last version; a client whose
        # last update trained from an older version is told to stop by the server instead.
        assert fired.group(2) in (
            f"a hook ended the cycle: reached version {VERSIONS} (round {VERSIONS})",
            "the server ended the run",
        )
