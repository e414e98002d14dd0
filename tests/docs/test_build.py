"""The documentation site builds strictly: no warning, no broken link, no missing reference."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_build_strict_has_no_warnings(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}

    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    api = (tmp_path / "api" / "index.html").read_text(encoding="utf-8")
    assert "fedloom.simulation.simulate" in api  # mkdocstrings rendered the docstrings
    flower = (tmp_path / "coming-from" / "flower" / "index.html").read_text(encoding="utf-8")
    assert "make_net" in flower  # the tested file was included into the page ...
    assert "8&lt;" not in flower  # ... and no snippet marker was left in it


def test_getting_started_shows_the_readme_commands_verbatim() -> None:
    """The site's two set-up commands are the README's (and so CI's), not a stale copy."""
    fence = re.compile(r"```bash\n(.*?)\n```", re.DOTALL)
    readme = fence.findall((ROOT / "README.md").read_text(encoding="utf-8"))[:2]
    page = fence.findall((ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8"))[:2]

    assert page == readme
    assert "mkdocs build --strict" in readme[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert readme[1] in ci
