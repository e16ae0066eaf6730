"""The rooms of chalicelib, checked from the source (AST), so a change that breaks them fails CI.

* ``core`` imports nothing of kip's outside ``core`` (the shared leaves ``config`` and
  ``errors`` excepted) and never looks settings up; ``converge`` imports only ``core``;
  ``aws`` imports neither ``converge`` nor ``usecases``; nothing under chalicelib imports
  ``http`` but ``http`` itself; only ``aws`` imports boto3 or botocore.
* No import cycle between modules, function-level (deferred) imports included.
* No class over 250 lines, no function over 60.
"""
from __future__ import annotations

import ast
import pathlib
from graphlib import CycleError, TopologicalSorter

ROOT = pathlib.Path(__file__).resolve().parents[2]
LEAVES = {"chalicelib", "chalicelib.config", "chalicelib.errors"}
ALLOWED = {          # layer -> layers it may import
    "core": {"core"},
    "converge": {"core", "converge"},
    "aws": {"core", "aws"},
    "usecases": {"core", "converge", "aws", "usecases"},
    "http": {"core", "http"},
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in (ROOT / "chalicelib").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: pathlib.Path, modules: dict) -> set[str]:
    """Every kip module ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in modules)
    return {m for m in found if m == "chalicelib" or m.startswith("chalicelib.")} | \
        {m for m in found if m.split(".")[0] in ("boto3", "botocore")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else ""


def test_layers_import_only_downwards():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        layer = _layer(module)
        for imported in _imports(path, modules):
            if imported.split(".")[0] in ("boto3", "botocore"):
                if layer != "aws":
                    wrong.append(f"{module} imports {imported} (only chalicelib.aws may)")
                continue
            if imported in LEAVES or not layer:
                continue
            if _layer(imported) not in ALLOWED[layer]:
                wrong.append(f"{module} ({layer}) imports {imported}")
    assert wrong == []


def test_core_looks_no_settings_up():
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / "chalicelib" / "core").rglob("*.py")
            if "get_settings" in p.read_text()]
    assert hits == []


def test_no_import_cycles_deferred_imports_included():
    modules = _modules()
    graph = {m: {i for i in _imports(p, modules) if i in modules and i != "chalicelib"}
             for m, p in modules.items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_no_class_over_250_lines_and_no_function_over_60():
    long = []
    for path in [*(ROOT / "chalicelib").rglob("*.py"), ROOT / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                size = node.end_lineno - node.lineno + 1
                if size > (250 if isinstance(node, ast.ClassDef) else 60):
                    long.append(f"{path.relative_to(ROOT)}:{node.name} {size} lines")
    assert long == []


def test_the_rule_catches_an_upward_import(tmp_path):
    # the check itself: a core module importing a use case is reported
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from chalicelib.usecases import clusters\n")
    assert "chalicelib.usecases" in _imports(fake, _modules())
    assert _layer("chalicelib.usecases.clusters") not in ALLOWED["core"]
