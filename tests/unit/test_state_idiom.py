"""One immutable-state idiom in the pure code (STYLE.md principles 1-2, issue 13).

The idiom: a state or value is a frozen dataclass (slots); it changes only by a function that
returns a new one (``evolve(state, event)``, ``VoteSet.add``, ``FrozenMap.set``), sharing what did
not change; a mapping inside it is typed read-only (``Mapping``, ``FrozenMap``), so the type checker
refuses an in-place write anywhere (``make lint`` runs mypy over every package). A handful of
*folds* are deliberately mutable: accumulators a shell feeds one record at a time and never hands
on as a value; each is listed below with why.

The check is static (the source, not the running objects), so it also covers classes no test
constructs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Mutable on purpose: (file relative to the root, class) -> why.
MUTABLE_FOLDS = {
    ("protocol/entropy/verifier.py", "_Chain"):
        "the verifier's private per-source cursor, never returned",
    ("protocol/follow.py", "BlockFollower"):
        "the reader's fold over chain.blocks; it hands out ChainState values, which are frozen",
    ("services/audit/core/chain.py", "ChainAuditor"): "the audit's fold, fed by its shell",
    ("services/audit/core/entropy.py", "EntropyAuditor"): "the audit's fold, fed by its shell",
    ("services/audit/core/equivocation.py", "EquivocationScanner"):
        "the audit's fold, fed by its shell",
    ("services/audit/core/findings.py", "AuditReport"): "the findings being collected",
    ("services/audit/core/snapshots.py", "SnapshotAuditor"): "the audit's fold, fed by its shell",
    ("services/audit/core/projection.py", "_Row"): "a row of the Cassandra write-rule fold",
    ("services/audit/core/projection.py", "ProjectionFold"): "the Cassandra write-rule fold",
    ("services/shard_writer/core/partition.py", "PartitionState"):
        "the handler's committed per-partition aggregates; a batch works on a BatchState and "
        "folds in only after its Kafka transaction committed",
    ("services/shard_writer/core/partition.py", "BatchState"):
        "one batch's working copy, dropped when the transaction aborts",
}

MUTABLE_TYPES = ("dict", "list", "set", "bytearray", "Counter", "defaultdict", "OrderedDict",
                 "deque", "Dict", "List", "Set")


def pure_files() -> Iterator[Path]:
    yield from sorted((ROOT / "protocol").rglob("*.py"))
    for core in sorted((ROOT / "services").glob("*/core")):
        yield from sorted(core.rglob("*.py"))


def _dataclass_call(node: ast.ClassDef) -> ast.expr | None:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Name) and target.id == "dataclass":
            return decorator
        if isinstance(target, ast.Attribute) and target.attr == "dataclass":
            return decorator
    return None


def _frozen(decorator: ast.expr) -> bool:
    return isinstance(decorator, ast.Call) and any(
        k.arg == "frozen" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in decorator.keywords)


def violations(source: str, name: str) -> list[str]:
    """What breaks the idiom in one module's ``source`` (``name`` for the messages)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        decorator = _dataclass_call(node)
        if decorator is None:
            continue
        if not _frozen(decorator):
            if (name, node.name) not in MUTABLE_FOLDS:
                found.append(f"{name}: {node.name} is a mutable dataclass (freeze it, or list "
                             "it in MUTABLE_FOLDS with why)")
            continue
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                annotation = ast.unparse(statement.annotation)
                outer = annotation.split("[", 1)[0].rsplit(".", 1)[-1]
                if outer in MUTABLE_TYPES:
                    found.append(f"{name}: {node.name}.{statement.target.id} is a {annotation} "
                                 "in a frozen dataclass (use a tuple, frozenset or Mapping)")
    return found


def test_pure_state_is_frozen_with_read_only_fields() -> None:
    problems = []
    for path in pure_files():
        problems += violations(path.read_text(), path.relative_to(ROOT).as_posix())
    assert not problems, "\n".join(problems)


def test_every_listed_fold_still_exists() -> None:
    """An entry for a class that was frozen or removed would let a new mutable one hide."""
    for (name, cls), why in MUTABLE_FOLDS.items():
        tree = ast.parse((ROOT / name).read_text())
        classes = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        assert cls in classes, f"{name}: {cls} is gone; drop it from MUTABLE_FOLDS"
        decorator = _dataclass_call(classes[cls])
        assert decorator is not None and not _frozen(decorator), (
            f"{name}: {cls} is frozen now ({why}); drop it from MUTABLE_FOLDS")


def test_the_check_sees_each_kind_of_breach() -> None:
    source = '''
from dataclasses import dataclass, field
import dataclasses

@dataclass
class Loose:
    x: int

@dataclasses.dataclass(slots=True)
class AlsoLoose:
    x: int

@dataclass(frozen=True, slots=True)
class Leaky:
    votes: dict[bytes, int] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    seen: collections.Counter[str] = field(default_factory=collections.Counter)

@dataclass(frozen=True, slots=True)
class Sound:
    votes: Mapping[bytes, int]
    order: tuple[int, ...]
    names: frozenset[str]
'''
    found = violations(source, "example.py")
    assert len(found) == 5, found
    assert not [line for line in found if "Sound" in line]
