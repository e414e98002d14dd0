"""Import an example's modules fresh from its folder (every example has its own task.py)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], ModuleType]]:
    """``example("sklearn-heart", "compare")``: that module, imported from that folder."""
    imported: list[str] = []

    def load(folder: str, module: str) -> ModuleType:
        monkeypatch.syspath_prepend(str(EXAMPLES / folder))
        for name in ("task", module):
            monkeypatch.delitem(sys.modules, name, raising=False)
            imported.append(name)
        loaded = importlib.import_module(module)
        assert Path(loaded.__file__ or "").parent == EXAMPLES / folder
        return loaded

    yield load
    for name in imported:
        sys.modules.pop(name, None)
