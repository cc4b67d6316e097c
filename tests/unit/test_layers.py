"""The code base's shape, as tests: no two packages or services import each other, protocol/
stands on the standard library and ``cryptography`` alone, and the data model inside protocol/
reads bottom-up (no module cycle at all).

Imports are read from the source with ``ast`` (TYPE_CHECKING and function-level imports
included), so a cycle hidden behind a lazy import is still found. import-linter (``make lint``)
checks the layer order; these tests say which edge closes a cycle when there is one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "streams", "sdk", "services", "infra", "bench")


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            parts = list(relative.parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _imports(path: Path, module: str) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join([*base, node.module] if node.module else base)
            elif node.module:
                yield node.module


def unit_of(module: str) -> str | None:
    """A package (protocol, streams, sdk, infra, bench) or one service (services.<name>)."""
    parts = module.split(".")
    if parts[0] == "services":
        return ".".join(parts[:2]) if len(parts) > 1 else None
    return parts[0] if parts[0] in PACKAGES else None


def _graph(key: object) -> dict[str, dict[str, str]]:
    """edges[a][b] = a file of ``a`` that imports ``b``, at the granularity ``key`` gives."""
    edges: dict[str, dict[str, str]] = {}
    for module, path in _modules():
        source = key(module)  # type: ignore[operator]
        if source is None:
            continue
        for imported in _imports(path, module):
            target = key(imported)  # type: ignore[operator]
            if target is not None and target != source:
                edges.setdefault(source, {}).setdefault(target, str(path.relative_to(ROOT)))
    return edges


def cycles(edges: dict[str, dict[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, {}):
            if target not in index:
                strong(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            strong(node)
    return found


def _explain(edges: dict[str, dict[str, str]], component: list[str]) -> str:
    members = set(component)
    closing = [f"{a} -> {b} ({edges[a][b]})" for a in component for b in edges.get(a, {})
               if b in members]
    return " <-> ".join(component) + ": " + "; ".join(closing)


def test_no_two_packages_or_services_import_each_other() -> None:
    edges = _graph(unit_of)
    assert not cycles(edges), "\n".join(_explain(edges, c) for c in cycles(edges))


def test_the_protocol_data_model_has_no_module_cycle() -> None:
    edges = _graph(lambda m: m if m.split(".")[0] == "protocol" else None)
    assert not cycles(edges), "\n".join(_explain(edges, c) for c in cycles(edges))


def test_protocol_stands_on_the_standard_library_and_cryptography_alone() -> None:
    allowed = set(sys.stdlib_module_names) | {"cryptography", "protocol"}
    strays = sorted(
        f"{path.relative_to(ROOT)} imports {imported}"
        for module, path in _modules() if module.split(".")[0] == "protocol"
        for imported in _imports(path, module) if imported.split(".")[0] not in allowed
    )
    assert not strays, "\n".join(strays)


def test_services_never_import_the_sdk() -> None:
    edges = _graph(unit_of)
    offenders = sorted(f"{unit} ({where['sdk']})" for unit, where in edges.items()
                       if unit.startswith("services.") and "sdk" in where)
    assert not offenders, offenders


def test_the_cycle_finder_names_the_edge_that_closes_a_cycle() -> None:
    edges = {"a": {"b": "a.py"}, "b": {"c": "b.py"}, "c": {"a": "c.py"}, "d": {"a": "d.py"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert "c -> a (c.py)" in _explain(edges, ["a", "b", "c"])
