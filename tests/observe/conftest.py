"""Fixtures of the observe tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from recorded_runs import make_runs_dir


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """``runs/`` with two run folders: "alpha" (3 rounds, finished) and "beta" (1, running)."""
    return make_runs_dir(tmp_path)
