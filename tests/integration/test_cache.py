"""The embedding cache against real servers with the real MiniLM model: hits skip the model and return the same
vectors, mixed requests compute only what is new, one entry serves every ``normalize``/``dimensions`` variant,
duplicates are computed once, and a shared Redis (a real ``redis-server``) that dies changes nothing but a metric."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from embedserve.settings import CacheSettings
from tests.conftest import RunningServer, eventually, model_settings, run_server
from tests.wrappers import Delegating, Gated, wrapping

pytestmark = pytest.mark.integration

CACHE = CacheSettings(cache_bytes=8 * 2**20)


def metric(server: RunningServer, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def batches(server: RunningServer) -> float:
    """Forward passes run so far, as the batch counter metric reports them."""
    return metric(server, "embedserve_batch_duration_seconds_count", model="minilm")


def embed(client: httpx.Client, texts: list[str], **fields: object) -> tuple[np.ndarray, httpx.Response]:
    response = client.post("/embed", json={"inputs": texts, **fields})
    assert response.status_code == 200, response.text
    return np.array(response.json(), dtype=np.float32), response


def texts_seen(model: Delegating, tokenizer: Tokenizer) -> list[str]:
    """The texts the model computed, decoded from the token ids of its batches."""
    return [tokenizer.decode(ids) for ids in model.seen]


@pytest.fixture(scope="module")
def cached(minilm_path) -> Iterator[tuple[RunningServer, Delegating]]:
    """MiniLM with an 8 MiB in-process cache; the wrapper records what the model computes."""
    loader, built = wrapping(Delegating)
    with run_server(model_settings(minilm_path), loader=loader, cache=CACHE) as server:
        yield server, built[0]


@pytest.fixture(scope="module")
def tokenizer(minilm_path) -> Tokenizer:
    return Tokenizer.from_file(str(minilm_path / "tokenizer.json"))


def test_a_cache_hit_returns_the_identical_vector_without_running_the_model(cached):
    server, _ = cached
    with server.client() as client:
        first, miss = embed(client, ["the cache remembers this sentence", "and this one"])
        before = batches(server)
        again, hit = embed(client, ["the cache remembers this sentence", "and this one"])
        assert batches(server) == before
        assert np.array_equal(first, again)
        assert (miss.headers["x-cache-hits"], hit.headers["x-cache-hits"]) == ("0", "2")
        assert hit.headers["x-compute-tokens"] == miss.headers["x-compute-tokens"]
        usage = client.post("/v1/embeddings", json={"input": ["and this one"], "model": "minilm"})
        assert usage.headers["x-cache-hits"] == "1"
        assert usage.json()["usage"]["prompt_tokens"] == 5  # [CLS] and this one [SEP], counted though cached
    assert batches(server) == before
    assert metric(server, "embedserve_cache_hits_total", model="minilm", source="local") >= 3
    assert metric(server, "embedserve_cache_bytes") > 0


def test_a_request_mixing_cached_and_new_inputs_computes_only_the_new_ones_in_order(cached, tokenizer, minilm_path):
    server, model = cached
    texts = ["mixed one", "mixed two", "mixed three", "mixed four"]
    with server.client() as client:
        embed(client, [texts[0], texts[2]])
        del model.seen[:]
        merged, response = embed(client, texts)
        assert sorted(texts_seen(model, tokenizer)) == ["mixed four", "mixed two"]
        assert response.headers["x-cache-hits"] == "2"
    with run_server(model_settings(minilm_path), cache=CacheSettings(cache_bytes=0)) as plain, plain.client() as c:
        alone = np.stack([embed(c, [text])[0][0] for text in texts])
    assert np.allclose(merged, alone, atol=1e-6)


def test_one_entry_serves_every_normalize_and_dimensions_variant(cached, tokenizer):
    server, model = cached
    text = "one entry for every variant"
    with server.client() as client:
        raw, _ = embed(client, [text], normalize=False)
        del model.seen[:]
        unit, unit_response = embed(client, [text])
        short = client.post("/v1/embeddings", json={"input": [text], "model": "minilm", "dimensions": 128})
        assert short.status_code == 200, short.text
        assert (unit_response.headers["x-cache-hits"], short.headers["x-cache-hits"]) == ("1", "1")
    assert model.seen == []
    assert np.allclose(unit[0], raw[0] / np.linalg.norm(raw[0]), atol=1e-6)
    truncated = raw[0][:128] / np.linalg.norm(raw[0][:128])
    assert np.allclose(short.json()["data"][0]["embedding"], truncated, atol=1e-6)


def test_truncation_settings_are_part_of_the_key(cached):
    server, model = cached
    long = "word " * 600
    with server.client() as client:
        embed(client, [long], truncate=True, truncation_direction="right")
        del model.seen[:]
        _, left = embed(client, [long], truncate=True, truncation_direction="left")
        assert left.headers["x-cache-hits"] == "0"
        assert len(model.seen) == 1
        refused = client.post("/embed", json={"inputs": [long], "truncate": False})
        assert refused.status_code == 422
        assert "`inputs[0]`" in refused.json()["error"]


def test_duplicates_in_concurrent_requests_are_computed_once(minilm_path, tokenizer):
    loader, built = wrapping(Gated)
    text = "everyone asks for this at once"

    async def scenario(server: RunningServer, gated: Gated) -> list[httpx.Response]:
        cache = server.registry.cache
        assert cache is not None
        async with server.async_client() as client:
            first = await gated.hold(client, {"inputs": [text]})
            others = [
                asyncio.create_task(client.post("/embed", json={"inputs": [text]})),
                asyncio.create_task(client.post("/embed", json={"inputs": ["something new", text, text]})),
            ]
            await eventually(lambda: cache.waiting == 2)
            gated.gate.set()
            return await asyncio.gather(first, *others)

    with run_server(model_settings(minilm_path), loader=loader, cache=CACHE) as server:
        gated = built[0]
        first, second, third = asyncio.run(scenario(server, gated))
        flights = metric(server, "embedserve_cache_hits_total", model="minilm", source="flight")
    assert sorted(texts_seen(gated, tokenizer)) == ["everyone asks for this at once", "something new"]
    assert [r.headers["x-cache-hits"] for r in (first, second, third)] == ["0", "1", "2"]
    vector = first.json()[0]
    assert second.json()[0] == vector
    assert third.json()[1] == vector
    assert third.json()[2] == vector
    assert flights == 3


@dataclass
class Redis:
    """A real redis-server on a free loopback port, without persistence, in a temporary directory."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server; ./dev installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="embedserve-redis-") as workdir:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)
            yield Redis(port, process)
        finally:
            process.kill()
            process.wait(10)


def test_workers_sharing_redis_answer_from_it_and_a_dead_redis_changes_nothing_but_a_metric(minilm_path):
    texts = ["shared across the fleet", "computed by the first worker"]
    with redis_server() as redis:
        cache = CacheSettings(cache_bytes=8 * 2**20, cache_url=redis.url, cache_timeout=1.0)
        with (
            run_server(model_settings(minilm_path), cache=cache) as one,
            run_server(model_settings(minilm_path), cache=cache) as two,
            one.client() as c1,
            two.client() as c2,
        ):
            computed, _ = embed(c1, texts)
            before = batches(two)

            shared = one.registry.cache.shared if one.registry.cache else None
            assert shared is not None
            asyncio.run(eventually(lambda: shared.pending_writes == 0))  # the first worker writes in the background
            from_redis, response = embed(c2, texts)
            assert response.headers["x-cache-hits"] == "2"
            assert batches(two) == before
            assert np.array_equal(from_redis, computed)
            assert metric(two, "embedserve_cache_hits_total", model="minilm", source="shared") == 2

            redis.kill()
            new = ["asked after redis died", texts[0]]
            after_death, response = embed(c2, new)
            assert response.headers["x-cache-hits"] == "1"  # the in-process cache still answers
            assert np.array_equal(after_death[1], computed[0])
            fresh, _ = embed(c1, ["another after redis died"])
            assert fresh.shape == (1, 384)
            assert metric(two, "embedserve_shared_cache_errors_total", operation="read") >= 1
            assert metric(one, "embedserve_shared_cache_errors_total", operation="read") >= 1


def test_cached_inputs_take_no_admission_slot(minilm_path):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path, max_concurrent_requests=1, max_client_batch_size=1)

    async def scenario(server: RunningServer, gated: Gated) -> None:
        async with server.async_client() as client:
            warm = await client.post("/embed", json={"inputs": ["asked before"]})
            assert warm.status_code == 200
            holder = await gated.hold(client, {"inputs": ["holds the only slot"]})  # the only slot, held
            cached = await client.post("/embed", json={"inputs": ["asked before"]})
            refused = await client.post("/embed", json={"inputs": ["new while full"]})
            gated.gate.set()
            assert (await holder).status_code == 200
        assert (cached.status_code, cached.headers["x-cache-hits"]) == (200, "1")
        assert cached.json() == warm.json()
        assert refused.status_code == 429

    with run_server(settings, loader=loader, cache=CACHE) as server:
        asyncio.run(scenario(server, built[0]))


def test_a_frozen_redis_is_waited_for_at_most_the_timeout_then_inputs_are_computed(minilm_path, caplog):
    caplog.set_level(logging.WARNING, logger="embedserve.cache")
    with redis_server() as redis:
        cache = CacheSettings(cache_bytes=8 * 2**20, cache_url=redis.url, cache_timeout=0.2)
        with run_server(model_settings(minilm_path), cache=cache) as server, server.client() as client:
            warm, _ = embed(client, ["asked while redis answers"])
            redis.process.send_signal(signal.SIGSTOP)  # alive and connected, but silent: a black-holed Redis
            try:
                vectors, response = embed(client, ["asked while redis is frozen", "asked while redis answers"])
            finally:
                redis.process.send_signal(signal.SIGCONT)
            assert response.headers["x-cache-hits"] == "1"
            assert np.array_equal(vectors[1], warm[0])
            assert metric(server, "embedserve_shared_cache_errors_total", operation="read") >= 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "embedserve.cache"]
    assert len(warnings) == 1  # rate-limited: at most one every 10 s
    assert "shared cache (--cache-url) read failed (TimeoutError" in warnings[0]


def test_a_request_that_joined_a_flight_whose_client_left_computes_the_input_itself(minilm_path, tokenizer):
    loader, built = wrapping(Gated)
    text = "the first asker hangs up"

    async def scenario(server: RunningServer, gated: Gated) -> httpx.Response:
        cache = server.registry.cache
        assert cache is not None
        async with server.async_client() as leaving, server.async_client() as staying:
            leader = await gated.hold(leaving, {"inputs": [text]})
            follower = asyncio.create_task(staying.post("/embed", json={"inputs": [text]}))
            await eventually(lambda: cache.waiting == 1)
            leader.cancel()  # the client hangs up: its flight ends without a vector
            await eventually(lambda: server.runtime.queued == 1)  # the follower queued the input itself
            gated.gate.set()
            return await follower

    with run_server(model_settings(minilm_path), loader=loader, cache=CACHE) as server:
        gated = built[0]
        answer = asyncio.run(scenario(server, gated))
        with server.client() as client:
            cached, again = embed(client, [text])
    assert (answer.status_code, answer.headers["x-cache-hits"]) == (200, "0")
    assert texts_seen(gated, tokenizer) == [text, text]
    assert again.headers["x-cache-hits"] == "1"
    assert np.array_equal(np.array(answer.json(), dtype=np.float32), cached)
