"""The layers, by folder: http -> core -> engines.

* Only ``embedserve/engines/**`` imports an inference runtime (torch, onnxruntime, openvino).
* ``embedserve/core/**`` never imports starlette, uvicorn, the HTTP layer or torch.
* ``embedserve/engines/**`` never imports the core or the HTTP layer.
* Nothing outside ``embedserve/http/`` (and the CLI that starts it) imports starlette or uvicorn.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import embedserve

pytestmark = pytest.mark.unit

PACKAGE = Path(embedserve.__file__).parent
RUNTIMES = ("torch", "onnxruntime", "openvino")
WEB = ("starlette", "uvicorn")
STARTS_THE_SERVER = {"embedserve.cli", "embedserve.__main__"}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = ("embedserve", *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module a file imports, at any depth in the file, as absolute dotted names. ``from a import b`` counts
    as both ``a`` and ``a.b`` (b may be a module); relative imports are resolved against the file's package."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules(folder: str = "") -> dict[str, set[str]]:
    """module name -> what it imports, for every module under ``embedserve/<folder>``."""
    root = PACKAGE / folder
    return {module_name(path): imported(path) for path in sorted(root.rglob("*.py"))}


def offending(imports: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(i for i in imports if any(i == b or i.startswith(b + ".") for b in banned))


def test_the_layers_are_folders():
    for folder in ("http", "core", "engines"):
        assert (PACKAGE / folder / "__init__.py").is_file(), folder
    assert modules("core")
    assert modules("engines")
    assert modules("http")


def test_only_engines_import_an_inference_runtime():
    for name, imports in modules().items():
        if not name.startswith("embedserve.engines"):
            assert not offending(imports, RUNTIMES), name


def test_the_core_imports_no_web_framework_no_http_layer_and_no_torch():
    for name, imports in modules("core").items():
        bad = offending(imports, (*WEB, "embedserve.http", "torch"))
        assert not bad, f"{name} imports {bad}"


def test_engines_never_import_the_core_or_the_http_layer():
    for name, imports in modules("engines").items():
        bad = offending(imports, ("embedserve.core", "embedserve.http"))
        assert not bad, f"{name} imports {bad}"


def test_only_the_http_layer_and_the_gateway_import_the_web_framework():
    for name, imports in modules().items():
        if not name.startswith(("embedserve.http", "embedserve.gateway")) and name not in STARTS_THE_SERVER:
            bad = offending(imports, WEB)
            assert not bad, f"{name} imports {bad}"


def test_the_gateway_imports_no_engine_no_core_and_no_inference_runtime():
    assert modules("gateway")
    for name, imports in modules("gateway").items():
        bad = offending(imports, (*RUNTIMES, "embedserve.engines", "embedserve.core"))
        assert not bad, f"{name} imports {bad}"


def test_importing_the_gateway_does_not_import_torch_or_an_engine():
    code = (
        "import sys, embedserve.gateway.app, embedserve.gateway.cli\n"
        "print(sorted(m for m in sys.modules if m in ('torch', 'onnxruntime') or m.startswith('embedserve.engines')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_checker_sees_relative_and_from_imports(tmp_path):
    # Guards the guard: a relative import of the HTTP layer from the core must be caught, not silently skipped.
    fake = tmp_path / "embedserve"
    (fake / "core").mkdir(parents=True)
    probe = fake / "core" / "probe.py"
    probe.write_text("from .. import http\nfrom ..http.web import json_response\nfrom embedserve import engines\n")
    assert {"embedserve.http", "embedserve.http.web", "embedserve.engines"} <= imported(probe, fake)


def test_importing_the_app_does_not_import_torch():
    code = "import sys, embedserve.http.app, embedserve.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_describing_a_model_works_without_torch():
    # Every engine reuses describe(); with torch unimportable it must still read the default model's description.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from embedserve.engines.describe import describe\n"
        "from embedserve.settings import ModelSettings\n"
        "d = describe(ModelSettings())\n"
        "print(d.kind, d.pooling, d.dim, d.max_input_length)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["embedding", "mean", "384", "256"]


def test_modules_stay_small():
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.relative_to(PACKAGE)
