"""Imports flow one way: server -> engine -> kernels, server -> tokenizer (DESIGN.md)."""

import ast
import subprocess
import sys
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


@pytest.mark.parametrize("module", ["server.__main__", "engine", "kernels"])
def test_thread_settings_are_in_place_before_numpy_loads(module):
    """kernels/_env.py must run first (before NumPy and numba), from every entry point."""
    code = ("import sys\norder = []\n"
            "class Spy:\n    def find_spec(self, name, path=None, target=None):\n"
            "        order.append(name)\n"
            "sys.meta_path.insert(0, Spy())\n"
            f"import {module}\n"
            "print(order.index('kernels._env') < order.index('numpy'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True"
