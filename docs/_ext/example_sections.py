"""A griffe extension for the docs build: read fedloom's ``Example:`` sections as examples.

fedloom's docstrings (STYLE.md) head their doctests ``Example:``. Griffe's Google
parser reads the singular word as an admonition and renders the ``>>>`` lines as
prose; this extension renames the header to ``Examples:`` when griffe loads an
object, so the doctests render as Python sessions. The source is not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADER = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headers to ``Examples:`` in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each object griffe loads."""
        if obj.docstring is not None:
            obj.docstring.value = _HEADER.sub(r"\1Examples:", obj.docstring.value)
