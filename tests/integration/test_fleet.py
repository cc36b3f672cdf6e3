"""Several models in one process: overload of one does not block another; a model that fails to load stops
start-up with a message naming it, or, with --allow-partial-start, is reported while the others serve."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import httpx
import pytest

from embedserve.settings import EdgeSettings
from tests.conftest import eventually, model_settings, run_server
from tests.integration.test_command import command, free_port, serving
from tests.wrappers import Gated, wrapping

pytestmark = pytest.mark.integration


def test_flooding_one_model_leaves_another_serving_at_normal_latency(minilm_path):
    gated_loader, built = wrapping(Gated)

    def loader(spec):  # model "a" gets a gate the test holds closed; "b" is the plain real model
        if spec.served_name == "a":
            return gated_loader(spec)
        from embedserve.core.registry import default_loader

        return default_loader(spec)

    a = model_settings(minilm_path, served_model_name="a", max_concurrent_requests=4, max_client_batch_size=4)
    b = model_settings(minilm_path, served_model_name="b")

    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            baseline = []
            for _ in range(5):
                t0 = time.perf_counter()
                assert (await client.post("/embed", json={"inputs": "warm", "model": "b"})).status_code == 200
                baseline.append(time.perf_counter() - t0)
            built[0].gate.clear()
            stuck = [asyncio.create_task(client.post("/embed", json={"inputs": f"a{i}", "model": "a"}))
                     for i in range(4)]  # fmt: skip
            await eventually(lambda: server.registry.runtimes["a"].admission.in_use == 4)
            flood = await asyncio.gather(
                *(client.post("/v1/embeddings", json={"input": "x", "model": "a"}) for _ in range(40))
            )
            assert {r.status_code for r in flood} == {429}
            during = []
            for i in range(10):
                t0 = time.perf_counter()
                response = await client.post("/embed", json={"inputs": f"b is fine {i}", "model": "b"})
                during.append(time.perf_counter() - t0)
                assert response.status_code == 200
            assert sorted(during)[5] < max(0.25, 5 * sorted(baseline)[2])
            built[0].gate.set()
            assert all(r.status_code == 200 for r in await asyncio.gather(*stuck))

    with run_server(a, b, loader=loader, edge=EdgeSettings(rate_limit_rps=0)) as server:
        asyncio.run(scenario(server.url))


def fleet_config(tmp_path, minilm_path, broken) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  - name: good\n    model_id: {minilm_path}\n  - name: broken\n    model_id: {broken}\n")
    return str(path)


def test_a_model_that_fails_to_load_stops_start_up_naming_it(minilm_path, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    result = subprocess.run(
        [command(), "--config", fleet_config(tmp_path, minilm_path, broken), "--port", str(free_port())],
        capture_output=True, text=True, timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "model 'broken'" in result.stderr
    assert str(broken) in result.stderr
    assert "config.json" in result.stderr


def test_with_allow_partial_start_the_others_serve_and_the_failed_model_is_reported(minilm_path, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    args = [str(fleet_config(tmp_path, minilm_path, broken)), "--allow-partial-start"]
    with serving(["--config", *args], tmp_path / "server.log") as url:
        health = httpx.get(f"{url}/health").json()
        assert health == {"status": "ready", "models": {"good": "ready", "broken": "failed"}}
        described = {m["served_model_name"]: m for m in httpx.get(f"{url}/info").json()["models"]}
        assert described["broken"]["state"] == "failed"
        assert "config.json" in described["broken"]["error"]
        assert httpx.post(f"{url}/embed", json={"inputs": "x", "model": "good"}).status_code == 200
        refused = httpx.post(f"{url}/embed", json={"inputs": "x", "model": "broken"})
        assert refused.status_code == 503
        assert "failed to load" in refused.json()["error"]
