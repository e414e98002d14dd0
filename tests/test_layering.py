"""The import picture of DESIGN.md, checked by walking every module's imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fedloom"

# layer -> top-level names (fedloom subpackages or third-party packages) it must never import
FORBIDDEN: dict[str, set[str]] = {
    "core": {
        *("aggregators", "strategies", "privacy", "server", "client", "transport", "proto"),
        *("simulation", "deployment", "data", "store", "observe", "config", "cli", "grpc"),
        "torch",
    },
    "aggregators": {
        *("strategies", "server", "client", "transport", "proto", "simulation", "deployment"),
        *("store", "observe", "config", "cli", "grpc"),
    },
    "strategies": {
        *("server", "client", "transport", "proto", "simulation", "deployment", "store"),
        *("observe", "config", "cli", "grpc"),
    },
    "privacy": {
        *("strategies", "server", "client", "transport", "proto", "simulation", "deployment"),
        *("store", "observe", "config", "cli", "grpc"),
    },
    "server": {
        *("client", "transport", "proto", "simulation", "deployment", "store", "observe"),
        *("config", "cli", "grpc"),
    },
    "client": {
        *("server", "strategies", "aggregators", "transport", "proto", "simulation"),
        *("deployment", "store", "config", "cli", "grpc"),
    },
    "transport": {
        *("server", "strategies", "aggregators", "client", "simulation", "deployment"),
        *("store", "config", "cli"),
    },
    "data": {
        *("server", "strategies", "aggregators", "client", "transport", "proto"),
        *("simulation", "deployment", "store", "cli", "grpc"),
    },
    "package": {
        *("server", "strategies", "aggregators", "client", "simulation", "deployment"),
        *("store", "observe", "config", "cli", "grpc", "proto"),
    },
    "simulation": {"cli", "grpc", "deployment"},
    "deployment": {"cli", "simulation"},
    "relaying": {"cli", "simulation"},
    "store": {"cli", "simulation", "deployment", "grpc"},
    "observe": {"cli", "simulation", "deployment", "grpc"},
    "config": {"cli", "grpc", "deployment"},
    # a topology is pure names: it checks graphs and builds nothing
    "topology": {
        *("core", "aggregators", "strategies", "privacy", "server", "client", "transport"),
        *("proto", "simulation", "deployment", "data", "store", "observe", "config", "grpc"),
    },
}
EVERYONE_FORBIDDEN = {"cli"}


def imported_names(source: str, module: str) -> set[str]:
    """The fedloom subpackages and third-party top-level packages `source` imports."""
    names: set[str] = set()
    package_parts = module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                targets = [".".join([*base, node.module or ""]).strip(".")]
            else:
                targets = [node.module or ""]
            if targets == ["fedloom"]:  # from fedloom import cli
                targets = [f"fedloom.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] == "fedloom":
                if len(parts) > 1:
                    names.add(parts[1])
            else:
                names.add(parts[0])
    return names


def layer_of(path: Path) -> str:
    relative = path.relative_to(SRC).with_suffix("")
    return relative.parts[0]


def violations(source: str, path: Path) -> list[str]:
    layer = layer_of(path)
    module = "fedloom." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    forbidden = FORBIDDEN.get(layer, set()) | (EVERYONE_FORBIDDEN - {layer})
    return sorted(f"{module} imports {name}" for name in imported_names(source, module) & forbidden)


def test_layering_every_module_imports_only_downwards() -> None:
    found = [
        problem
        for path in sorted(SRC.rglob("*.py"))
        if path.parent != SRC
        or path.name in ("config.py", "deployment.py", "topology.py", "relaying.py")
        for problem in violations(path.read_text(), path)
    ]

    assert found == []


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        ("strategies/x.py", "from fedloom.server import Orchestrator", "imports server"),
        ("strategies/x.py", "import fedloom.transport.codec", "imports transport"),
        ("server/x.py", "import grpc", "imports grpc"),
        ("server/x.py", "from ..transport import codec", "imports transport"),
        ("simulation/x.py", "from fedloom.cli import main", "imports cli"),
        ("aggregators/x.py", "from fedloom import cli", "imports cli"),
        ("server/x.py", "from fedloom.transport.grpc import channel", "imports transport"),
        ("transport/grpc/x.py", "from fedloom.server import Orchestrator", "imports server"),
    ],
)
def test_layering_checker_flags_a_broken_direction(
    relative: str, source: str, expected: str
) -> None:
    """The checker itself would catch each kind of violation DESIGN.md forbids."""
    problems = violations(source, SRC / relative)

    assert any(expected in problem for problem in problems), problems


def test_import_fedloom_needs_only_numpy() -> None:
    code = (
        "import sys, fedloom, fedloom.client, fedloom.data, fedloom.server\n"
        "heavy = {'torch', 'sklearn', 'scipy', 'grpc', 'rich'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert out.stdout.strip() == "[]"
