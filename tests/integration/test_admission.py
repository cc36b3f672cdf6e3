"""Admission by predicted wait and client deadlines, on a real server with the real MiniLM model.

A gate holds the forward pass (the only fake: it controls timing), so the work queued ahead stays put while a test
asks the server to admit more."""

from __future__ import annotations

import asyncio
import gc
import math
import socket

import httpx
import pytest

from tests.conftest import eventually, model_settings, run_server
from tests.rawhttp import read_answer
from tests.wrappers import Gated, wrapping

pytestmark = pytest.mark.integration

LONG = "the tokens of this sentence fill the model's whole input window " * 40  # truncated at 256 tokens


def _tokens_ahead(server) -> int:  # type: ignore[no-untyped-def]
    return int(server.runtime._queue.tokens_ahead)


async def _block_with_backlog(client: httpx.AsyncClient, model: Gated, inputs: int) -> asyncio.Task[httpx.Response]:
    """Close the gate and queue one request of ``inputs`` long texts behind it; returns its pending response."""
    return await model.hold(client, {"inputs": [f"{i} {LONG}" for i in range(inputs)]})


def test_a_request_predicted_to_wait_past_max_queue_time_gets_429_with_retry_after_from_the_drain_time(minilm_path):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path, max_queue_time=0.1, max_batch_requests=4)

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            backlog = await _block_with_backlog(client, model, 32)
            await eventually(lambda: _tokens_ahead(server) > 32 * 200)
            rate = server.runtime.admission.throughput.tokens_per_second
            assert rate is not None
            wait = _tokens_ahead(server) / rate
            assert wait > 0.1, f"the backlog is only {wait:.3f} s of work at {rate:.0f} tokens/s"

            refused = await client.post("/v1/embeddings", json={"input": "a short query", "model": "minilm"})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "overloaded"
            assert "predicted wait" in refused.json()["error"]["message"]
            assert refused.headers["retry-after"] == str(max(1, math.ceil(wait - 0.1)))
            assert 0 < int(refused.headers["retry-after-ms"]) <= 1000 * int(refused.headers["retry-after"])
            tei = await client.post("/embed", json={"inputs": "a short query"})
            assert tei.status_code == 429
            assert tei.json()["error_type"] == "Overloaded"
            # Shed before the body is read: not even a malformed body is parsed while the work ahead is over the
            # limit; the keep-alive connection carries on.
            unread = await client.post(
                "/embed", content=b'{"inputs": [broken', headers={"content-type": "application/json"}
            )
            assert unread.status_code == 429
            assert unread.headers.get("connection") != "close"
            tokenize = await client.post("/tokenize", json={"inputs": "tokenizing is not queued work"})
            assert tokenize.status_code == 200
            gauges = {
                line.split("{")[0]: float(line.rsplit(" ", 1)[1])
                for line in (await client.get("/metrics")).text.splitlines()
                if line.startswith(("embedserve_predicted_wait_seconds{", "embedserve_throughput_tokens_per_second{"))
            }
            assert gauges["embedserve_predicted_wait_seconds"] == pytest.approx(wait, rel=0.05)
            assert gauges["embedserve_throughput_tokens_per_second"] == pytest.approx(rate, rel=0.05)

            model.gate.set()
            assert (await backlog).status_code == 200
            await eventually(lambda: _tokens_ahead(server) == 0)
            after = await client.post("/embed", json={"inputs": "a short query"})
            assert after.status_code == 200

    with run_server(settings, loader=loader) as server:
        assert gc.get_freeze_count() > 0, "the start-up heap was not frozen (full collections would pause the loop)"
        asyncio.run(scenario(server.url))
        assert server.runtime.admission.in_use == 0
        assert server.runtime.admission.tokenizing_tokens == 0


def test_a_flood_is_answered_from_the_request_head_and_the_connection_stays_usable(minilm_path):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path, max_queue_time=0.1, max_batch_requests=4)

    async def scenario(url: str, port: int) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            backlog = await _block_with_backlog(client, model, 32)
            await eventually(lambda: _tokens_ahead(server) > 32 * 200)
            body = b'{"input": "sent only after the answer", "model": "minilm"}'
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                head = "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
                refused = await asyncio.to_thread(read_answer, sock)  # before any body byte
                assert refused.status == 429
                assert refused.json()["error"]["code"] == "overloaded"
                assert int(refused.headers["retry-after"]) >= 1
                sock.sendall(body[:10])
                sock.sendall(body[10:] + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                health = await asyncio.to_thread(read_answer, sock)
                assert health.status == 200, health.body  # the dropped body did not desynchronize the connection
            metrics = (await client.get("/metrics")).text
            assert 'embedserve_requests_total{model="-",route="/v1/embeddings",status="429"} 1.0' in metrics
            model.gate.set()
            assert (await backlog).status_code == 200

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url, int(server.url.rsplit(":", 1)[1])))


def test_retry_after_grows_with_the_work_queued_ahead(minilm_path):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path, max_queue_time=0.05, max_batch_requests=1)

    async def scenario(url: str) -> list[int]:
        model = built[0]
        seen = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            backlogs = [await _block_with_backlog(client, model, 8)]
            for _ in range(3):
                rate = server.runtime.admission.throughput.tokens_per_second
                assert rate is not None
                # Raise the backlog by whole seconds of work each time, measured in this machine's speed.
                wanted = _tokens_ahead(server) + rate * 1.5
                server.runtime.admission.max_queue_time = 1e9  # let the backlog itself in
                while _tokens_ahead(server) < wanted:
                    body = {"inputs": [f"{len(backlogs)} {i} {LONG}" for i in range(32)]}
                    backlogs.append(asyncio.create_task(client.post("/embed", json=body)))
                    before = _tokens_ahead(server)
                    await eventually(lambda before=before: _tokens_ahead(server) > before)
                server.runtime.admission.max_queue_time = 0.05
                refused = await client.post("/embed", json={"inputs": "a short query"})
                assert refused.status_code == 429
                seen.append(int(refused.headers["retry-after"]))
            model.gate.set()
            assert {r.status_code for r in await asyncio.gather(*backlogs)} == {200}
        return seen

    with run_server(settings, loader=loader) as server:
        retry_after = asyncio.run(scenario(server.url))
    assert retry_after == sorted(retry_after)
    assert retry_after[-1] >= retry_after[0] + 2, retry_after


def test_with_max_queue_time_0_only_the_slots_bound_admission(minilm_path):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path, max_queue_time=0, max_batch_requests=4)

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            backlog = await _block_with_backlog(client, model, 32)
            await eventually(lambda: _tokens_ahead(server) > 32 * 200)
            queued = asyncio.create_task(client.post("/embed", json={"inputs": "a short query"}))
            await eventually(lambda: server.runtime.admission.in_use == 33)
            model.gate.set()
            assert (await backlog).status_code == 200
            assert (await queued).status_code == 200

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url))


def test_a_deadline_that_passes_in_the_queue_gets_504_and_its_input_is_never_computed(minilm_path):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path)

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            backlog = await _block_with_backlog(client, model, 1)
            computed_before = len(model.seen)
            late = asyncio.create_task(
                client.post("/embed", json={"inputs": "too late"}, headers={"X-Request-Timeout-Ms": "150"})
            )
            grpc = asyncio.create_task(
                client.post(
                    "/v1/embeddings",
                    json={"input": "too late too", "model": "minilm"},
                    headers={"grpc-timeout": "150m"},
                )
            )
            await eventually(lambda: server.runtime.queued == 2)
            await asyncio.sleep(0.3)
            model.gate.set()
            assert (await backlog).status_code == 200
            expired = await late
            assert expired.status_code == 504
            assert expired.json()["error_type"] == "DeadlineExceeded"
            openai = await grpc
            assert openai.status_code == 504
            assert openai.json()["error"]["code"] == "deadline_exceeded"
            assert len(model.seen) == computed_before, "an expired input reached the model"
            in_time = await client.post("/embed", json={"inputs": "in time"}, headers={"X-Request-Timeout-Ms": "5000"})
            assert in_time.status_code == 200
            metrics = (await client.get("/metrics")).text
            assert 'embedserve_rejected_requests_total{reason="deadline"} 2.0' in metrics

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url))
        assert server.runtime.admission.in_use == 0


def test_a_deadline_shorter_than_the_predicted_wait_gets_504_at_once(minilm_path):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path, max_batch_requests=4)

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            backlog = await _block_with_backlog(client, model, 32)
            await eventually(lambda: _tokens_ahead(server) > 32 * 200)
            refused = await client.post("/embed", json={"inputs": "hurry"}, headers={"grpc-timeout": "1m"})
            assert refused.status_code == 504
            assert "predicted wait" in refused.json()["error"]
            assert server.runtime.queued < 32  # it never joined the queue
            model.gate.set()
            assert (await backlog).status_code == 200

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url))


@pytest.fixture(scope="module")
def served_minilm(minilm_path):  # type: ignore[no-untyped-def]
    with run_server(model_settings(minilm_path)) as server:
        yield server.url


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Request-Timeout-Ms", "soon"),
        ("X-Request-Timeout-Ms", "-5"),
        ("X-Request-Timeout-Ms", "nan"),
        ("grpc-timeout", "100"),
        ("grpc-timeout", "123456789S"),
        ("grpc-timeout", "0m"),
    ],
)
def test_a_malformed_deadline_header_gets_422_naming_the_header(served_minilm, header, value):
    response = httpx.post(f"{served_minilm}/embed", json={"inputs": "x"}, headers={header: value}, timeout=30)
    assert response.status_code == 422
    assert header in response.json()["error"]
    openai = httpx.post(
        f"{served_minilm}/v1/embeddings", json={"input": "x", "model": "minilm"}, headers={header: value}, timeout=30
    )
    assert openai.status_code == 422
    assert openai.json()["error"]["param"] == header.lower()
