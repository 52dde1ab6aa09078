"""Imports flow one way: server -> engine -> kernels, server -> tokenizer (DESIGN.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"engine", "kernels", "tokenizer", "server"}
ALLOWED = {
    "kernels": {"kernels"},
    "tokenizer": {"tokenizer"},
    "engine": {"engine", "kernels"},
    "server": {"server", "engine", "tokenizer"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package):
    for path in sorted((ROOT / package).glob("*.py")):
        bad = _imports(path) - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
