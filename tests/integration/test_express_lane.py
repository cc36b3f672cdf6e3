"""The express lane on a real server with the real MiniLM model (OpenVINO): it opens on the first high-priority
request, and from then on a high request computes while the main thread's forward pass is held, with the same
vector the main thread computes. A gate on the main thread's runner is the only fake: it controls timing."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from tests.conftest import eventually, model_settings, run_server
from tests.wrappers import GatedMain, wrapping

pytestmark = pytest.mark.integration

QUERY = "where is the nearest train station"


def test_a_high_request_computes_while_the_main_forward_pass_is_held_once_the_lane_opened(minilm_path):
    loader, built = wrapping(GatedMain)

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            assert (await client.get("/info")).json()["express_lane"] == "waiting"
            first = await client.post("/embed", json={"inputs": QUERY}, headers={"X-Priority": "high"})
            assert first.status_code == 200  # computed by the main thread: the lane opens in the background
            await eventually(lambda: server.runtime.express_lane == "open")
            lane = (await client.get("/info")).json()
            assert (lane["express_lane"], lane["lane_yield"]) == ("open", False)
            held = await model.hold(client, {"inputs": ["a bulk document held in the forward pass"] * 4,
                                             "priority": "low"})  # fmt: skip
            during = await asyncio.wait_for(
                client.post("/embed", json={"inputs": QUERY}, headers={"X-Priority": "high"}), timeout=30
            )
            assert during.status_code == 200
            assert not held.done()  # the main thread's pass is still at the gate
            model.gate.set()
            assert (await held).status_code == 200
        main, express = np.array(first.json()[0]), np.array(during.json()[0])
        assert float(main @ express / np.linalg.norm(main) / np.linalg.norm(express)) >= 0.99999

    with run_server(model_settings(minilm_path), loader=loader) as server:
        asyncio.run(scenario(server.url))


def test_without_the_express_lane_a_high_request_waits_for_the_held_pass(minilm_path):
    loader, built = wrapping(GatedMain)

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            lane = (await client.get("/info")).json()
            assert (lane["express_lane"], lane["lane_yield"]) == ("off", True)
            held = await model.hold(client, {"inputs": "held in the forward pass", "priority": "low"})
            high = asyncio.create_task(client.post("/embed", json={"inputs": QUERY}, headers={"X-Priority": "high"}))
            await eventually(lambda: server.runtime.queued > 0)
            await asyncio.sleep(0.5)
            assert not high.done()  # queued behind the held pass: nothing else computes it
            model.gate.set()
            assert {(await held).status_code, (await high).status_code} == {200}

    with run_server(model_settings(minilm_path, express_lane=False), loader=loader) as server:
        asyncio.run(scenario(server.url))


def test_an_engine_without_a_second_runner_reports_none_and_keeps_yielding(minilm_path):
    with run_server(model_settings(minilm_path, engine="onnx")) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/embed", json={"inputs": QUERY}, headers={"X-Priority": "high"}).status_code == 200
        asyncio.run(eventually(lambda: server.runtime.express_lane != "opening"))
        found = client.get("/info").json()
        assert (found["express_lane"], found["lane_yield"]) == ("none", True)
