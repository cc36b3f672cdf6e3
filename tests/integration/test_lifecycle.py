"""Loading, readiness and the hub-loading path."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import httpx
import pytest

from embedserve.core.registry import default_loader
from embedserve.http.app import create_app
from embedserve.settings import Settings
from tests.conftest import model_settings, run_server, serve_app
from tests.wrappers import Delegating, wrapping

pytestmark = pytest.mark.integration


def test_health_and_embeddings_answer_503_while_the_model_loads(minilm_path):
    release = threading.Event()

    def slow_loader(spec):
        if not release.wait(timeout=60):
            raise TimeoutError("test never released the loader")
        return default_loader(spec)

    app = create_app(Settings(models=(model_settings(minilm_path),)), loader=slow_loader)
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        try:
            health = client.get("/health")
            assert health.status_code == 503
            assert health.json() == {"error": "not ready: minilm loading", "error_type": "Unhealthy"}
            loading = client.post("/v1/embeddings", json={"input": "x", "model": "minilm"})
            assert loading.status_code == 503
            assert loading.json()["error"]["code"] == "unavailable"
            assert client.get("/info").json()["state"] == "loading"
        finally:
            release.set()
        for _ in range(600):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/health").json() == {"status": "ready", "models": {"minilm": "ready"}}
        assert client.post("/embeddings", json={"input": "x", "model": "minilm"}).status_code == 200


def test_the_bare_embeddings_alias_answers_like_v1_embeddings(minilm_server):
    body = {"input": ["alias check"], "model": "minilm"}
    with minilm_server.client() as client:
        alias, v1 = client.post("/embeddings", json=body).json(), client.post("/v1/embeddings", json=body).json()
        error = client.post("/embeddings", json={"input": [], "model": "minilm"}).json()
    assert alias["data"][0]["embedding"] == pytest.approx(v1["data"][0]["embedding"], abs=1e-6)
    assert error["error"]["code"] == "empty_input"


def fake_hub_cache(root: Path, repo: str, model_dir: Path, commit: str) -> None:
    """The Hugging Face cache layout (what a previous download leaves), with the model's files linked in."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    for path in model_dir.rglob("*"):
        if path.is_file():
            target = snapshot / path.relative_to(model_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)


def test_a_hub_id_loads_through_the_hugging_face_cache_offline_by_branch_and_by_commit(minilm_path, tmp_path):
    commit = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
    fake_hub_cache(tmp_path / "hub", "acme/minilm", minilm_path, commit)
    code = (
        "import sys; from embedserve.engines.modelfiles import resolve_model_dir;"
        "from embedserve.settings import ModelSettings;"
        "print(resolve_model_dir(ModelSettings(model_id='acme/minilm', revision=sys.argv[1] or None)))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    for revision in ("", commit):
        result = subprocess.run([sys.executable, "-c", code, revision], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(f"snapshots/{commit}")
    missing = subprocess.run(
        [sys.executable, "-c", code, "0" * 40], env=env, capture_output=True, text=True, check=False
    )
    assert missing.returncode != 0
    assert "could not fetch 'acme/minilm' at revision" in missing.stderr


def test_a_stopped_server_lets_its_model_go(minilm_path):
    # One process may stop an app and start another (an embedding library, these tests): the first model's memory
    # must not stay behind. Each stopped MiniLM server once kept 170-400 MiB alive this way.
    loader, built = wrapping(Delegating)
    with run_server(model_settings(minilm_path), loader=loader) as server, server.client() as client:
        assert client.post("/embed", json={"inputs": "hello"}).status_code == 200
    model = weakref.ref(built.pop().inner)
    gc.collect()
    assert model() is None
