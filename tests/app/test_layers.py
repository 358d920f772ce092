"""The rooms' one-way flow, enforced on the imports themselves (parsed, not imported): models/
knows no web and no app; the engine knows no HTTP (no app.edge, no FastAPI or Starlette); the edge
never reaches into the process's factory, serving or workers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "models": ("app", "fastapi", "starlette", "uvicorn", "pydantic"),
    "app/engine": ("app.edge", "app.server.factory", "app.server.serving", "app.server.workers", "fastapi", "starlette",
                   "uvicorn"),
    "app/edge": ("app.server.factory", "app.server.serving", "app.server.workers"),
}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_nothing_from_the_rooms_above_it(room):
    files = sorted((ROOT / room).rglob("*.py"))
    assert files, room
    found = {f"{path.relative_to(ROOT)}: {name}" for path in files for name in imports(path)
             for banned in FORBIDDEN[room] if name == banned or name.startswith(banned + ".")}
    assert found == set()


def test_the_checker_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom app.edge.schemas import X\nif True:\n    from fastapi import FastAPI\n")
    assert imports(module) == {"os", "app.edge.schemas", "fastapi"}
