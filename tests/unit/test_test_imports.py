"""The tests' own rooms: test modules and conftest files take helpers from tests.support only
(never from tests.conftest, from another test module, or from a harness beside the tests), and
tests.support never imports a test module."""
from __future__ import annotations

import ast
import pathlib

import pytest

TESTS = pathlib.Path(__file__).resolve().parents[1]
MODULES = sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every ``import x`` / ``from x import y`` in the file, anywhere in it;
    a ``from tests.support import drive`` counts as tests.support.drive."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.append((node.lineno, "." * node.level + (node.module or "")))
    return out


def wrong(path: pathlib.Path, rel: str = "") -> list[str]:
    rel = rel or path.relative_to(TESTS.parent).as_posix()
    bad = []
    for line, module in imported(path):
        if module.startswith("."):
            bad.append(f"{rel}:{line} relative import {module}")
        elif module == "tests" or module.startswith("tests."):
            if not module.startswith("tests.support."):
                bad.append(f"{rel}:{line} imports {module}")
            elif rel.startswith("tests/support/") and ".test_" in module:
                bad.append(f"{rel}:{line} support imports a test module {module}")
    return bad


@pytest.mark.parametrize("path", MODULES, ids=[p.relative_to(TESTS).as_posix() for p in MODULES])
def test_helpers_come_only_from_tests_support(path):
    assert wrong(path) == []


def test_the_check_refuses_conftest_test_module_and_harness_imports(tmp_path):
    fake = tmp_path / "test_fake.py"
    fake.write_text("from tests.conftest import ACCOUNT\n"
                    "from tests.aws.test_triggers import sample\n"
                    "def f():\n    from tests.reliability import harness\n"
                    "from . import helpers\n"
                    "from tests.support.world import REGION\nfrom tests.support import drive\n")
    assert sorted(wrong(fake, "tests/aws/test_fake.py")) == [
        "tests/aws/test_fake.py:1 imports tests.conftest.ACCOUNT",
        "tests/aws/test_fake.py:2 imports tests.aws.test_triggers.sample",
        "tests/aws/test_fake.py:4 imports tests.reliability.harness",
        "tests/aws/test_fake.py:5 relative import ."]
    support = tmp_path / "world.py"
    support.write_text("from tests.support.test_x import y\n")
    assert wrong(support, "tests/support/world.py") == [
        "tests/support/world.py:1 support imports a test module tests.support.test_x.y"]
