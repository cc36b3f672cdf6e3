"""A fleet on loopback: a gateway in front of real worker processes (model a: two replicas, model b: one).

Killing a replica costs no request of its model and nothing of the other; a model without a live worker answers
503 for itself only and serves again once a worker is back; the worker's own answers (429 with Retry-After, timing
headers) pass through; keys end at the gateway, and the workers accept only the gateway."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from embedserve.http.keys import GATEWAY_TOKEN_HEADER
from tests.integration.test_command import command, free_port, wait_healthy

pytestmark = pytest.mark.integration

KEY = "gateway-client-key"
TOKEN = "fleet-shared-token"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Fleet:
    gateway: str
    workers: dict[str, list[str]]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    args: dict[str, list[str]] = field(default_factory=dict)
    logs: Path = Path()

    def start(self, url: str) -> None:
        log = self.logs / f"worker-{url.rsplit(':', 1)[1]}.log"
        with log.open("ab") as sink:
            self.processes[url] = subprocess.Popen(
                [command(), "--port", url.rsplit(":", 1)[1], *self.args[url]],
                env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill(self, url: str) -> None:
        self.processes[url].kill()  # SIGKILL: no drain, connections die mid-flight
        self.processes[url].wait()


@pytest.fixture(scope="module")
def fleet(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    (root / "keys").write_text(f"{KEY}\n")
    (root / "token").write_text(f"{TOKEN}\n")
    a = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    b = [f"http://127.0.0.1:{free_port()}"]
    gateway_port = free_port()
    spec = {
        "gateway": {"port": gateway_port, "hostname": "127.0.0.1", "api_key_file": str(root / "keys"),
                    "token_file": str(root / "token"), "rate_limit_rps": 0},  # the streams may outrun 80/s
        "models": [{"name": "a", "model_id": str(minilm_path), "urls": a},
                   {"name": "b", "model_id": str(minilm_path), "urls": b}],
    }  # fmt: skip
    (root / "fleet.yaml").write_text(yaml.safe_dump(spec))
    running = Fleet(f"http://127.0.0.1:{gateway_port}", {"a": a, "b": b}, logs=root)
    common = ["--model-id", str(minilm_path), "--engine", "torch", "--gateway-token-file", str(root / "token"),
              "--rate-limit-rps", "0"]  # fmt: skip
    for url in a:
        running.args[url] = [*common, "--served-model-name", "a"]
    # b takes one request at a time, so a burst is refused with 429 by the worker itself.
    running.args[b[0]] = [*common, "--served-model-name", "b", "--max-concurrent-requests", "1",
                          "--max-client-batch-size", "1"]  # fmt: skip
    try:
        for url in a + b:  # one at a time: loading is CPU-bound, and the workers share two cores with the test
            running.start(url)
            wait_healthy(url, running.processes[url], running.logs / f"worker-{url.rsplit(':', 1)[1]}.log")
        with (root / "gateway.log").open("wb") as sink:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "embedserve", "gateway", "--fleet", str(root / "fleet.yaml")],
                env={**os.environ}, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        running.processes["gateway"] = gateway
        wait_healthy(running.gateway, gateway, root / "gateway.log", timeout=30)
        yield running
    finally:
        for process in running.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def test_keys_are_checked_at_the_gateway_and_workers_accept_only_the_gateway(fleet):
    body = {"inputs": "hello", "model": "a"}
    refused = httpx.post(f"{fleet.gateway}/embed", json=body)
    assert refused.status_code == 401
    assert refused.json()["error_type"] == "Unauthorized"
    openai_shape = httpx.post(f"{fleet.gateway}/v1/embeddings", json={"input": "hello"})
    assert openai_shape.status_code == 401
    assert "message" in openai_shape.json()["error"]

    served = httpx.post(f"{fleet.gateway}/embed", json=body, headers=AUTH)
    assert served.status_code == 200
    assert len(served.json()[0]) == 384
    assert "x-inference-time" in served.headers  # the worker's timing headers pass through

    worker = fleet.workers["a"][0]
    assert httpx.post(f"{worker}/embed", json=body).status_code == 401
    assert httpx.post(f"{worker}/embed", json=body, headers={GATEWAY_TOKEN_HEADER: "wrong"}).status_code == 401
    assert httpx.post(f"{worker}/embed", json=body, headers={GATEWAY_TOKEN_HEADER: TOKEN}).status_code == 200
    assert httpx.get(f"{worker}/health").status_code == 200  # load balancers and the gateway's poller


def test_the_fleet_routes_by_model_and_speaks_for_every_model(fleet):
    default = httpx.post(f"{fleet.gateway}/v1/embeddings", json={"input": ["x", "y"]}, headers=AUTH)
    assert default.status_code == 200
    assert default.json()["model"] == "a"  # no model: the fleet's first, as the single server does
    other = httpx.post(f"{fleet.gateway}/v1/embeddings", json={"input": "x", "model": "b"}, headers=AUTH)
    assert other.json()["model"] == "b"
    unknown = httpx.post(f"{fleet.gateway}/embed", json={"inputs": "x", "model": "nope"}, headers=AUTH)
    assert unknown.status_code == 404
    assert unknown.json()["error_type"] == "ModelNotFound"

    assert [m["id"] for m in httpx.get(f"{fleet.gateway}/v1/models").json()["data"]] == ["a", "b"]
    health = httpx.get(f"{fleet.gateway}/health").json()
    assert health["models"] == {"a": {"live": 2, "workers": 2}, "b": {"live": 1, "workers": 1}}
    info = httpx.get(f"{fleet.gateway}/info").json()["models"]
    assert info["a"]["model_id"] == info["b"]["model_id"]
    assert info["b"]["max_concurrent_requests"] == 1


def test_a_workers_429_reaches_the_client_with_its_retry_after(fleet):
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fleet.gateway, headers=AUTH, timeout=60) as client:
            # Distinct inputs: identical ones would be computed once (the cache's single flight), taking no slot.
            texts = [f"burst {i}: " + "a longer sentence " * 20 for i in range(24)]
            return await asyncio.gather(*(client.post("/embed", json={"inputs": t, "model": "b"}) for t in texts))

    answers = asyncio.run(burst())
    refused = [r for r in answers if r.status_code == 429]
    assert refused, [r.status_code for r in answers]
    assert {r.status_code for r in answers} <= {200, 429}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert refused[0].json()["error_type"] == "Overloaded"


def test_a_dead_replica_costs_no_request_and_a_dead_model_costs_only_itself(fleet):
    failures: dict[str, list[int]] = {"a": [], "b": []}
    served: dict[str, int] = {"a": 0, "b": 0}
    phase = {"b_down": False}

    async def stream(client: httpx.AsyncClient, model: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            r = await client.post("/embed", json={"inputs": f"steady {served[model]}", "model": model})
            if r.status_code == 200:
                served[model] += 1
            elif model == "b" and phase["b_down"] and r.status_code in (503, 429):
                await asyncio.sleep(0.05)  # 503 while b has no worker; 429 from its one slot once back
            else:
                failures[model].append(r.status_code)

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=fleet.gateway, headers=AUTH, timeout=60) as client:
            stop = asyncio.Event()
            streams = [asyncio.create_task(stream(client, "a", stop)) for _ in range(2)]
            streams.append(asyncio.create_task(stream(client, "b", stop)))
            try:
                await steps(client)
            finally:
                stop.set()
                await asyncio.gather(*streams)

    async def steps(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(1.5)
        fleet.kill(fleet.workers["a"][0])  # one of a's two replicas, mid-stream
        await asyncio.sleep(2)
        before = served["b"]
        await asyncio.sleep(1)
        assert served["b"] > before  # b kept serving
        phase["b_down"] = True
        fleet.kill(fleet.workers["b"][0])  # b's only replica
        await asyncio.sleep(1)
        r = await client.post("/v1/embeddings", json={"input": "x", "model": "b"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "unavailable"  # OpenAI's shape on /v1/*
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["down"] == ["b"]
        before_a = served["a"]
        await asyncio.sleep(1)
        assert served["a"] > before_a  # a unaffected by b's death

        fleet.start(fleet.workers["b"][0])  # same port again
        worker = fleet.workers["b"][0]
        restarted = time.monotonic()
        while True:  # the worker loads its model (seconds, under the streams' load)
            assert time.monotonic() - restarted < 120, "the restarted worker did not load"
            try:
                if (await client.get(f"{worker}/health")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        healthy = time.monotonic()
        for _ in range(200):  # 10 s at most
            if (await client.post("/embed", json={"inputs": "back?", "model": "b"})).status_code == 200:
                break
            await asyncio.sleep(0.05)
        back_in["b"] = time.monotonic() - healthy

    back_in: dict[str, float] = {}
    asyncio.run(scenario())
    assert failures == {"a": [], "b": []}
    assert served["a"] > 20
    assert back_in["b"] < 3  # the gateway's poller noticed the restarted worker within a few seconds
