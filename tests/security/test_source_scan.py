"""No code in the package unpickles, evaluates or extracts what a peer, a file or a package gives it.

An AST walk over every module resolves import aliases (``import pickle as p``,
``from pickle import loads``, ``from torch import load as tl``) and flags, naming
file:line: imports of pickle-family modules, ``torch.load`` without
``weights_only=True``, ``torch.jit.load``, any ``allow_pickle`` that is not literally
False, ``yaml.load`` without a safe loader (and ``yaml.unsafe_load``/``full_load``),
``pandas.read_pickle``, builtin ``eval``/``exec``, ``shell=True`` and ``extractall``
without ``filter="data"``. A line ending in ``# safe: <why>`` is a reviewed exception.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("src/fedloom", "benchmarks", "examples", "scripts")

PICKLE_MODULES = frozenset(
    {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal", "joblib"}
)
SAFE_YAML_LOADERS = frozenset(
    {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}
)
ALWAYS_UNSAFE = {
    "torch.jit.load": "torch.jit.load runs TorchScript code from the file",
    "yaml.unsafe_load": "yaml.unsafe_load builds arbitrary Python objects",
    "yaml.unsafe_load_all": "yaml.unsafe_load_all builds arbitrary Python objects",
    "yaml.full_load": "yaml.full_load builds Python objects; use yaml.safe_load",
    "yaml.full_load_all": "yaml.full_load_all builds Python objects; use yaml.safe_load_all",
    "pandas.read_pickle": "pandas.read_pickle unpickles",
    "builtins.eval": "eval runs code",
    "builtins.exec": "exec runs code",
}


class _Scanner(ast.NodeVisitor):
    """Collects (line, problem) for one module."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.found: list[tuple[int, str]] = []

    # --- imports: remember what each local name stands for ---

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root in PICKLE_MODULES:
                self.found.append((node.lineno, f"imports {alias.name}"))
            self.aliases[alias.asname or root] = alias.name if alias.asname else root

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.split(".")[0] in PICKLE_MODULES:
            self.found.append((node.lineno, f"imports from {module}"))
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"

    # --- calls ---

    def _qualified(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return _canonical(self.aliases[node.id])
            return f"builtins.{node.id}"
        if isinstance(node, ast.Attribute):
            base = self._qualified(node.value)
            return None if base is None else _canonical(f"{base}.{node.attr}")
        return None

    def visit_Call(self, node: ast.Call) -> None:
        name = self._qualified(node.func) or ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg is not None}
        if name in ALWAYS_UNSAFE:
            self.found.append((node.lineno, ALWAYS_UNSAFE[name]))
        if name.split(".")[0] in PICKLE_MODULES:
            self.found.append((node.lineno, f"calls {name}"))
        if name == "torch.load" and not _is_constant(keywords.get("weights_only"), True):
            self.found.append((node.lineno, "torch.load without weights_only=True"))
        if name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or self._qualified(loader) not in SAFE_YAML_LOADERS:
                self.found.append((node.lineno, f"{name} without a safe Loader"))
        if "allow_pickle" in keywords and not _is_constant(keywords["allow_pickle"], False):
            self.found.append((node.lineno, "allow_pickle is not False"))
        if "shell" in keywords and not _is_constant(keywords["shell"], False):
            self.found.append((node.lineno, "shell=True"))
        if (
            isinstance(node.func, ast.Attribute)
            and node.func.attr == "extractall"
            and not _is_constant(keywords.get("filter"), "data")
        ):
            self.found.append((node.lineno, 'extractall without filter="data"'))
        if (
            name == "importlib.import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).split(".")[0] in PICKLE_MODULES
        ):
            self.found.append((node.lineno, f"imports {node.args[0].value}"))
        self.generic_visit(node)


def _canonical(name: str) -> str:
    """Spell numpy and pandas the same however they were imported."""
    for short, full in (("np.", "numpy."), ("pd.", "pandas.")):
        if name.startswith(short):
            return full + name[len(short) :]
    return name


def _is_constant(node: ast.expr | None, value: object) -> bool:
    if not isinstance(node, ast.Constant):
        return False
    return node.value == value if isinstance(value, str) else node.value is value


def scan_source(source: str, path: str) -> list[str]:
    """``path:line: problem`` for every unsafe load in `source` (reviewed lines skipped)."""
    tree = ast.parse(source, filename=path)
    scanner = _Scanner()
    scanner.visit(tree)
    lines = source.splitlines()
    return [
        f"{path}:{line}: {problem}"
        for line, problem in sorted(set(scanner.found))
        if "# safe:" not in lines[line - 1]
    ]


def _modules() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))


def test_source_scan_finds_no_unsafe_loading_in_the_package() -> None:
    modules = _modules()

    problems = [
        problem
        for path in modules
        for problem in scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]

    assert len([m for m in modules if "src/fedloom/" in m.as_posix()]) > 50  # it saw the package
    assert problems == []


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("import pickle\npickle.loads(b'')", "imports pickle"),
        ("import pickle as p\np.loads(b'')", "calls pickle.loads"),
        ("from pickle import loads\nloads(b'')", "calls pickle.loads"),
        ("from pickle import loads as harmless\nharmless(b'')", "calls pickle.loads"),
        ("import cloudpickle", "imports cloudpickle"),
        ("from _pickle import Unpickler", "imports from _pickle"),
        ("import dill.settings", "imports dill.settings"),
        ("import importlib\nimportlib.import_module('pickle')", "imports pickle"),
        ("import torch\ntorch.load('f')", "torch.load without weights_only=True"),
        ("import torch\ntorch.load('f', weights_only=False)", "without weights_only=True"),
        ("import torch as t\nt.load('f')", "torch.load without weights_only=True"),
        ("from torch import load as tl\ntl('f')", "torch.load without weights_only=True"),
        ("import torch\ntorch.jit.load('f')", "torch.jit.load runs TorchScript"),
        ("import numpy as np\nnp.load('f', allow_pickle=True)", "allow_pickle is not False"),
        ("from numpy import load\nload('f', allow_pickle=flag)", "allow_pickle is not False"),
        ("import yaml\nyaml.load(s)", "yaml.load without a safe Loader"),
        ("import yaml\nyaml.load(s, Loader=yaml.Loader)", "yaml.load without a safe Loader"),
        ("import yaml as y\ny.load(s, y.UnsafeLoader)", "yaml.load without a safe Loader"),
        ("from yaml import load\nload(s)", "yaml.load without a safe Loader"),
        ("import yaml\nyaml.unsafe_load(s)", "yaml.unsafe_load builds"),
        ("import pandas as pd\npd.read_pickle('f')", "pandas.read_pickle unpickles"),
        ("eval('1')", "eval runs code"),
        ("exec('x = 1')", "exec runs code"),
        ("import subprocess\nsubprocess.run('ls', shell=True)", "shell=True"),
        ("import tarfile\ntarfile.open('a').extractall('d')", 'extractall without filter="data"'),
    ],
)
def test_source_scan_flags_unsafe_loading_however_it_is_spelled(source: str, problem: str) -> None:
    found = scan_source(source, "module.py")

    assert any(f.startswith("module.py:") and problem in f for f in found), found


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load('f', weights_only=True)",
        "import numpy as np\nnp.load('f')\nnp.load('f', allow_pickle=False)",
        "import yaml\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)",
        "model.eval()",
        "import tarfile\ntarfile.open('a').extractall('d', filter='data')",
        "import subprocess\nsubprocess.run(['ls'])",
        "import pickle  # safe: reviewed, never fed outside input",
    ],
)
def test_source_scan_accepts_safe_spellings_and_reviewed_lines(source: str) -> None:
    assert scan_source(source, "module.py") == []


def test_source_scan_names_file_and_line() -> None:
    source = textwrap.dedent(
        """\
        import numpy as np

        def read(path):
            return np.load(path, allow_pickle=True)
        """
    )

    assert scan_source(source, "pkg/io.py") == ["pkg/io.py:4: allow_pickle is not False"]
