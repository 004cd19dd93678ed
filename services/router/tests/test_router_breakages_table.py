"""The break-it table (breakages.py) stays applicable: each breakage's code is still found exactly once and its
catching test still exists. Running the breakages is slow (one pytest per entry) and stays a manual step; a stale
entry would make that step stop at once, so it is caught here, where code moves."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def _load_table() -> ModuleType:
    # importlib import mode: the tests directory is not a package, so the table is loaded by its path.
    spec = importlib.util.spec_from_file_location("router_breakages", Path(__file__).with_name("breakages.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


breakages = _load_table()


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


@pytest.mark.parametrize("name", sorted(breakages.BREAKS))
def test_each_breakage_still_applies_and_names_a_real_test(name: str) -> None:
    path, replacements, test = breakages.BREAKS[name]
    src = Path(breakages.R + path).read_text()
    for code, broken in replacements:
        assert src.count(code) == 1, f"{name}: the code to break is no longer found once in {path}: {code[:80]!r}"
        assert code != broken
    test_file, _, test_name = test.partition("::")
    assert test_name.split("[")[0] in _test_names(Path(breakages.R + test_file)), f"{name}: no test {test}"
