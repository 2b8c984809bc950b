"""The benchmarks import what the project has: a name that moved breaks a benchmark only when someone runs it (the
saturation benchmark's ``SCORE_CHOICES`` did), so every project import in ``bench/`` is checked here. An import
inside an ``except ImportError`` handler (a fallback for older checkouts) is not."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
PROJECT = ("tasks", "flows", "storage", "prompts")


def _fallbacks(tree: ast.AST) -> set[ast.AST]:
    """The nodes inside ``except ImportError`` (or ``ModuleNotFoundError``) handlers."""
    return {node for handler in ast.walk(tree) if isinstance(handler, ast.ExceptHandler)
            and isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
            for node in ast.walk(handler)}


def project_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(BENCH.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _fallbacks(tree)
        for node in ast.walk(tree):
            if node in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
                found += [(path.name, node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):  # `import tasks.x.y`: the module itself
                found += [(path.name, alias.name, "") for alias in node.names if alias.name.split(".")[0] in PROJECT]
    return found


def test_every_project_name_a_benchmark_imports_exists():
    imports = project_imports()
    assert len({name for name, _, _ in imports}) >= 10  # the benchmarks were read
    missing = []
    for bench, module, name in imports:
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            missing.append(f"{bench}: import {module}")
            continue
        if name and not hasattr(loaded, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{bench}: from {module} import {name}")
    assert missing == []
