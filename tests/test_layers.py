"""The package's layers point one way: no import cycles, and the bottom layers import
nothing above them. Read from the source (every import statement, at module level or inside
a function), so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "git_theta"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The package's modules that module ``name`` imports."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    is_package = MODULES[name].name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle() -> list[str]:
    """One import cycle among the package's modules, or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_the_scan_sees_the_package() -> None:
    assert {"git_theta.filter", "git_theta.repo", "git_theta.gitio.git"} <= set(MODULES)
    assert "git_theta.store" in GRAPH["git_theta.filter"]
    assert "git_theta.gitio.git" in GRAPH["git_theta.repo"]


def test_no_import_cycle() -> None:
    assert _cycle() == []


def test_a_cycle_would_be_found() -> None:
    GRAPH["git_theta.errors"].add("git_theta.filter")  # errors <- ... <- filter
    try:
        assert _cycle()
    finally:
        GRAPH["git_theta.errors"].discard("git_theta.filter")


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        ("git_theta.gitio", ("git_theta.gitio", "git_theta.errors")),
        ("git_theta.store", ("git_theta.errors",)),
        ("git_theta.errors", ()),
    ],
)
def test_bottom_layers_import_nothing_above_them(layer: str, allowed: tuple[str, ...]) -> None:
    members = [m for m in MODULES if m == layer or m.startswith(layer + ".")]
    assert members
    above = {
        (member, target)
        for member in members
        for target in GRAPH[member]
        if not any(target == a or target.startswith(a + ".") for a in allowed)
    }
    assert above == set()


def test_only_cli_finds_the_repository_from_the_process() -> None:
    """Below cli/, the repository is handed in: nothing asks for the process's directory."""
    offenders = [
        name
        for name, path in MODULES.items()
        if not name.startswith("git_theta.cli")
        and any(s in path.read_text(encoding="utf-8") for s in ("Path.cwd(", "os.getcwd("))
    ]
    assert offenders == []
