"""Priority lanes on a real server with the real MiniLM model (issue 13): the header, the body field and the API key's
default choose the lane; high-lane inputs queued after low ones run first; admission keeps room for the top lane.

A gate holds the forward pass (the only fake: it controls timing), so the queue stays put while a test looks at it."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from embedserve.core.priority import Priority
from embedserve.settings import EdgeSettings
from tests.conftest import eventually, model_settings, run_server
from tests.wrappers import Gated, wrapping

pytestmark = pytest.mark.integration

LONG = "the tokens of this sentence fill the model's whole input window " * 40  # truncated at 256 tokens
KEY, BULK_KEY = "interactive-key", "backfill-key"


def test_high_priority_inputs_queued_after_low_ones_run_first(minilm_path):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path, max_batch_requests=1)  # one input per forward pass: the order is visible

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            low_texts = [f"bulk document number {i}" for i in range(4)]
            high_texts = [f"interactive query {i}" for i in range(3)]
            ids = {}
            for text in low_texts + high_texts:
                tokens = (await client.post("/tokenize", json={"inputs": text})).json()[0]
                ids[tuple(token["id"] for token in tokens)] = text
            blocker = await model.hold(client, {"inputs": "held in the forward pass"})
            ran_before = len(model.seen)
            low = asyncio.create_task(client.post("/embed", json={"inputs": low_texts, "priority": "low"}))
            await eventually(lambda: server.runtime.queued_in(Priority.LOW) == 4)
            high = asyncio.create_task(
                client.post(
                    "/v1/embeddings", json={"input": high_texts, "model": "minilm"}, headers={"X-Priority": "high"}
                )
            )
            await eventually(lambda: server.runtime.queued_in(Priority.HIGH) == 3)
            model.gate.set()
            assert {(await r).status_code for r in (blocker, low, high)} == {200}
            order = [ids[tuple(seen)] for seen in model.seen[ran_before:]]
            assert order == high_texts + low_texts

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url))


def test_the_api_keys_default_lane_applies_unless_the_request_names_one(minilm_path, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n{BULK_KEY} priority=low\n")
    loader, built = wrapping(Gated)
    edge = EdgeSettings(api_key_file=str(keys), rate_limit_rps=0)

    async def scenario(url: str) -> None:
        model = built[0]
        bulk = {"Authorization": f"Bearer {BULK_KEY}"}
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            client.headers["Authorization"] = f"Bearer {KEY}"
            blocker = await model.hold(client, {"inputs": "held in the forward pass"})
            pending = [asyncio.create_task(client.post("/embed", json={"inputs": "mine"}))]
            await eventually(lambda: server.runtime.queued_in(Priority.NORMAL) == 1)
            pending.append(asyncio.create_task(client.post("/embed", json={"inputs": "backfill"}, headers=bulk)))
            await eventually(lambda: server.runtime.queued_in(Priority.LOW) == 1)
            body = {"inputs": "backfill, but urgent", "priority": "high"}
            pending.append(asyncio.create_task(client.post("/embed", json=body, headers=bulk)))
            await eventually(lambda: server.runtime.queued_in(Priority.HIGH) == 1)
            vllm = {"input": "vLLM's integer form: below 0 is high", "model": "minilm", "priority": -1}
            pending.append(asyncio.create_task(client.post("/v1/embeddings", json=vllm, headers=bulk)))
            await eventually(lambda: server.runtime.queued_in(Priority.HIGH) == 2)
            model.gate.set()
            assert {(await r).status_code for r in (blocker, *pending)} == {200}

    with run_server(model_settings(minilm_path), loader=loader, edge=edge) as server:
        asyncio.run(scenario(server.url))


def test_a_malformed_priority_gets_422_naming_where_it_came_from(minilm_server):
    with minilm_server.client() as client:
        body = client.post("/embed", json={"inputs": "hi", "priority": "urgent"})
        assert body.status_code == 422
        assert "`priority` must be one of 'high', 'normal', 'low'" in body.json()["error"]
        header = client.post("/v1/embeddings", json={"input": "hi", "model": "minilm"}, headers={"X-Priority": "9x"})
        assert header.status_code == 422
        assert header.json()["error"]["param"] == "x-priority"
        rerank = client.post("/rerank", json={"query": "q", "texts": ["a"], "priority": True})
        assert rerank.status_code == 422  # a boolean is not a lane, on every queued route (MiniLM cannot rerank,
        assert "`priority`" in rerank.json()["error"]  # but the body is checked before the model)
        assert client.post("/embed", json={"inputs": "hi", "priority": "low"}).status_code == 200
        assert client.post("/embed", json={"inputs": "hi", "priority": "LOW"}).status_code == 422  # as its schema says
        assert client.post("/embed", json={"inputs": "hi"}, headers={"X-Priority": "LOW"}).status_code == 200
        assert client.post("/embed", json={"inputs": "hi", "priority": 3}).status_code == 200
        info = client.get("/info").json()
        assert (info["priority_reserve"], info["low_priority_share"]) == (0.1, 0.5)  # each lane's share, as admitted


def test_while_low_work_holds_its_share_of_the_slots_low_gets_429_and_higher_lanes_get_in(minilm_path):
    loader, built = wrapping(Gated)
    # 40 slots: low may hold 20 (--low-priority-share 0.5), normal 36 (--priority-reserve 0.1 keeps 4 for high).
    settings = model_settings(minilm_path, max_queue_time=0, max_concurrent_requests=40, priority_reserve=0.1,
                              low_priority_share=0.5, max_batch_requests=1)  # fmt: skip

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            backfill = await model.hold(client, {"inputs": [f"row {i}" for i in range(20)], "priority": "low"})
            refused = await client.post("/embed", json={"inputs": "one more row", "priority": "low"})
            assert refused.status_code == 429
            assert "20 input slots are taken and low priority may use 20" in refused.json()["error"]
            normal = asyncio.create_task(client.post("/embed", json={"inputs": [f"n {i}" for i in range(16)]}))
            await eventually(lambda: server.runtime.admission.in_use == 36)
            assert (await client.post("/embed", json={"inputs": "normal is full"})).status_code == 429
            high = asyncio.create_task(
                client.post("/embed", json={"inputs": [f"query {i}" for i in range(4)]}, headers={"X-Priority": "high"})
            )
            await eventually(lambda: server.runtime.admission.in_use == 40)
            metrics = (await client.get("/metrics")).text
            assert 'embedserve_priority_queue_size_inputs{model="minilm",priority="high"} 4.0' in metrics
            for lane in ("low", "normal"):
                assert (
                    f'embedserve_priority_requests_total{{model="minilm",outcome="refused",priority="{lane}"}} 1.0'
                    in metrics
                )
            model.gate.set()
            assert {(await r).status_code for r in (backfill, normal, high)} == {200}
            metrics = (await client.get("/metrics")).text
            for lane in ("high", "normal", "low"):
                assert (
                    f'embedserve_priority_requests_total{{model="minilm",outcome="admitted",priority="{lane}"}} 1.0'
                    in metrics
                )

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url))


def test_a_high_request_is_admitted_past_a_queue_that_refuses_lower_lanes_by_predicted_wait(minilm_path):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path, max_queue_time=0.1, max_batch_requests=1)

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            blocker = await model.hold(client, {"inputs": "held in the forward pass"})
            backlog = asyncio.create_task(client.post("/embed", json={"inputs": [f"{i} {LONG}" for i in range(32)]}))
            await eventually(lambda: server.runtime.queued_in(Priority.NORMAL) == 32)
            rate = server.runtime.admission.throughput.tokens_per_second
            assert rate is not None
            ahead = server.runtime._queue.tokens_ahead  # type: ignore[union-attr]
            assert ahead / rate > 0.1, f"the backlog is only {ahead / rate:.3f} s of work at {rate:.0f} tokens/s"
            running = server.runtime._queue.tokens_ahead_of(Priority.HIGH)  # type: ignore[union-attr]
            assert running / rate < 0.1, f"the held input runs {running / rate:.3f} s at {rate:.0f} tokens/s"

            for lane in ("normal", "low"):  # refused from the head (the connection layer), or by admission
                refused = await client.post("/embed", json={"inputs": "a query"}, headers={"X-Priority": lane})
                assert refused.status_code == 429, lane
            admitted = asyncio.create_task(
                client.post("/embed", json={"inputs": "an interactive query"}, headers={"X-Priority": "high"})
            )
            await eventually(lambda: server.runtime.queued_in(Priority.HIGH) == 1)  # its own lane was empty
            model.gate.set()
            assert {(await r).status_code for r in (blocker, backlog, admitted)} == {200}

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url))


def test_the_gateway_forwards_the_lane_and_sends_the_keys_default_when_the_request_names_none(minilm_path, tmp_path):
    from starlette.testclient import TestClient

    from embedserve.fleet import parse_fleet
    from embedserve.gateway.app import create_gateway

    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n{BULK_KEY} priority=low\n")
    interactive, bulk = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {BULK_KEY}"}
    with run_server(model_settings(minilm_path)) as worker:
        models = [{"name": "minilm", "model_id": str(minilm_path), "urls": [worker.url]}]
        fleet = parse_fleet({"gateway": {"api_key_file": str(keys), "rate_limit_rps": 0}, "models": models})
        with TestClient(create_gateway(fleet, environ={})) as gateway:
            for _ in range(600):
                if gateway.get("/health").status_code == 200:
                    break
                time.sleep(0.05)
            sent = [
                gateway.post("/embed", json={"inputs": "backfill row"}, headers=bulk),  # the key's default: low
                gateway.post("/embed", json={"inputs": "urgent", "priority": "high"}, headers=bulk),  # the body's
                gateway.post("/embed", json={"inputs": "a query"}, headers={**interactive, "X-Priority": "high"}),
                gateway.post("/embed", json={"inputs": "a query"}, headers=interactive),  # no default: normal
            ]
            assert [r.status_code for r in sent] == [200] * 4
        with worker.client() as client:
            metrics = client.get("/metrics").text
    for lane, count in (("low", 1), ("high", 2), ("normal", 1)):
        assert (
            f'embedserve_priority_requests_total{{model="minilm",outcome="admitted",priority="{lane}"}} {count}.0'
            in (metrics)
        ), lane
