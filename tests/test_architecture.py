"""The shape of the package, checked: run.json has one writer."""

from __future__ import annotations

import ast
from pathlib import Path

import expman

PACKAGE = Path(expman.__file__).parent
OWNER = PACKAGE / "rundir" / "lifecycle.py"
LAYOUT = PACKAGE / "rundir" / "layout.py"  # names the file; writes nothing
WRITERS = {"write_bytes_atomic", "write_json_atomic", "stage_bytes", "put_in_place", "replace", "rename", "open"}
PATH_WRITERS = {"write_bytes", "write_text", "open", "rename", "replace", "unlink", "touch", "symlink_to"}


def _names_the_record(node: ast.AST) -> bool:
    """``<anything>.record`` (a RunDir's run.json) or the literal file name."""
    return (isinstance(node, ast.Attribute) and node.attr == "record") or (
        isinstance(node, ast.Constant) and node.value == "run.json"
    )


def record_writes(path: Path) -> list[str]:
    """Places in ``path`` that write run.json: a write helper given the record's path, or a
    write method called on it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        arguments = [*node.args, *(k.value for k in node.keywords)]
        if name in WRITERS and any(_names_the_record(a) for a in arguments):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
        if isinstance(func, ast.Attribute) and name in PATH_WRITERS and _names_the_record(func.value):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_only_the_lifecycle_module_writes_run_json() -> None:
    writes = [w for path in sorted(PACKAGE.rglob("*.py")) if path != OWNER for w in record_writes(path)]
    assert writes == [], f"run.json is written outside rundir/lifecycle.py at {writes}"
    assert record_writes(OWNER), "the check no longer sees the owner's own writes"


def test_the_file_name_lives_in_the_layout_alone() -> None:
    mentions = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path != LAYOUT and '"run.json"' in path.read_text()
    ]
    assert mentions == []
