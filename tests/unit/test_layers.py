"""Import direction: http -> core -> backend. Core modules never import starlette; only the modeling package imports
torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import embedserve

pytestmark = pytest.mark.unit

PACKAGE = Path(embedserve.__file__).parent
HTTP = {
    "app",
    "web",
    "edge",
    "cli",
    "routes.common",
    "routes.tei",
    "routes.openai",
    "routes.scoring",
    "routes.tokens",
    "__main__",
}


def in_modeling_package(name: str) -> bool:
    return name == "modeling" or name.startswith("modeling.")


def modules() -> dict[str, set[str]]:
    """module name -> top-level names it imports (absolute, any depth in the file)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        imports: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imports.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imports.add(node.module)
        found[name] = imports
    return found


def test_only_the_modeling_package_imports_torch():
    for name, imports in modules().items():
        if not in_modeling_package(name):
            assert not any(i == "torch" or i.startswith("torch.") for i in imports), name


def test_core_modules_never_import_starlette_or_uvicorn():
    for name, imports in modules().items():
        if name not in HTTP:
            bad = [i for i in imports if i.split(".")[0] in ("starlette", "uvicorn")]
            assert not bad, f"{name} imports {bad}"


def test_core_modules_never_import_the_http_layer():
    http_modules = {f"embedserve.{m}" for m in HTTP}
    for name, imports in modules().items():
        if name not in HTTP:
            assert not (imports & http_modules), name


def test_importing_the_app_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, embedserve.app, embedserve.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_modules_stay_small():
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name
