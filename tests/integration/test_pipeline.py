"""The batching pipeline under concurrency, overload, failures and disconnects, with the real MiniLM model."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.conftest import eventually, model_settings, run_server
from tests.wrappers import Gated, Poisoned, wrapping

pytestmark = pytest.mark.integration

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo"]


def make_texts(rng: random.Random, request: int) -> list[str]:
    """1-2 distinct texts of 1 to ~150 words; each names its request so no two requests share an input."""
    texts = []
    for k in range(rng.randint(1, 2)):
        words = rng.choices(WORDS, k=rng.choice([1, 3, 8, 20, 60, 150]))
        texts.append(f"request {request} part {k}: " + " ".join(words))
    return texts


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_200_concurrent_requests_each_get_their_own_unbatched_results(minilm_path, reference_model):
    rng = random.Random(7)
    requests = [make_texts(rng, i) for i in range(200)]
    unbatched = {text: reference_model.encode([text])[0] for texts in requests for text in texts}

    async def send_all(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(client.post("/embed", json={"inputs": t}) for t in requests))

    with run_server(model_settings(minilm_path)) as server:
        responses = asyncio.run(send_all(server.url))
        assert server.runtime.largest_batch > 1, "no batch of more than one input was formed"
        assert server.runtime.batches_run < sum(map(len, requests))
    for texts, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        got = np.array(response.json(), dtype=np.float32)
        expected = unit(np.stack([unbatched[t] for t in texts]))
        assert got.shape == expected.shape
        assert np.all(np.sum(got * expected, axis=1) >= 0.9999)


def test_excess_requests_get_429_at_once_while_admitted_ones_complete(minilm_path, reference_model):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path, max_concurrent_requests=4, max_client_batch_size=4)
    admitted_texts = [f"admitted request number {i}" for i in range(4)]

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            model.gate.clear()
            admitted = [asyncio.create_task(client.post("/embed", json={"inputs": t})) for t in admitted_texts]
            await eventually(lambda: server.runtime.admission.in_use == 4)

            # Each rejection timed alone over a warm keep-alive connection: the server's answer, not the client's.
            async with httpx.AsyncClient(base_url=url, timeout=60) as probe:
                await probe.get("/health")
                for i in range(20):
                    t0 = time.perf_counter()
                    response = await probe.post("/v1/embeddings", json={"input": f"excess {i}", "model": "minilm"})
                    elapsed = time.perf_counter() - t0
                    assert response.status_code == 429
                    assert response.json()["error"]["code"] == "overloaded"
                    assert response.headers["retry-after"] == "1"
                    assert elapsed < 0.05, f"429 took {elapsed * 1000:.1f} ms"
            burst = await asyncio.gather(*(client.post("/embed", json={"inputs": f"burst {i}"}) for i in range(50)))
            assert {response.status_code for response in burst} == {429}
            tei = await client.post("/embed", json={"inputs": "excess tei"})
            assert tei.status_code == 429
            assert tei.json()["error_type"] == "Overloaded"
            model.gate.set()
            for text, response in zip(admitted_texts, await asyncio.gather(*admitted), strict=True):
                assert response.status_code == 200
                got = np.array(response.json()[0])
                assert float(got @ unit(reference_model.encode([text])[0])) >= 0.9999
            after = await client.post("/embed", json={"inputs": "after the storm"})
            assert after.status_code == 200

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url))
        assert server.runtime.admission.in_use == 0


def test_a_failing_forward_pass_fails_only_its_own_batch(minilm_path, reference_model):
    poison_id = Tokenizer.from_file(str(minilm_path / "tokenizer.json")).token_to_id("volcano")
    assert poison_id is not None
    loader, built = wrapping(lambda inner: Poisoned(inner, poison_id))
    settings = model_settings(minilm_path, max_batch_requests=1)  # one input per batch: batches are requests

    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            texts = ["a calm lake", "the volcano erupted", "a quiet forest"]
            calm, poisoned, quiet = await asyncio.gather(*(client.post("/embed", json={"inputs": t}) for t in texts))
            assert poisoned.status_code == 500
            body = poisoned.json()
            assert body["error_type"] == "Backend"
            assert "secret" not in body["error"]
            assert "CUDA" not in body["error"]
            assert poisoned.headers["x-request-id"] in body["error"]
            for text, response in (("a calm lake", calm), ("a quiet forest", quiet)):
                assert response.status_code == 200
                assert float(np.array(response.json()[0]) @ unit(reference_model.encode([text])[0])) >= 0.9999
            again = await client.post("/v1/embeddings", json={"input": "the volcano slept", "model": "minilm"})
            assert again.status_code == 500
            assert again.json()["error"]["type"] == "server_error"
            later = await client.post("/embed", json={"inputs": "life goes on"})
            assert later.status_code == 200
            health = await client.get("/health")
            assert health.status_code == 200

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url))
        assert server.runtime.admission.in_use == 0


def test_inputs_of_a_client_that_disconnected_are_never_computed(minilm_path):
    loader, built = wrapping(Gated)
    settings = model_settings(minilm_path, max_batch_requests=1)
    tokenizer = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    abandoned_id = tokenizer.token_to_id("elephant")
    later_id = tokenizer.token_to_id("more")
    assert abandoned_id is not None
    assert later_id is not None

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            first = await model.hold(client, {"inputs": "the first request"})
            with pytest.raises(httpx.ReadTimeout):
                async with httpx.AsyncClient(base_url=url, timeout=0.3) as impatient:
                    await impatient.post("/embed", json={"inputs": "an elephant that left early"})
            await eventually(lambda: server.runtime.admission.in_use == 1)  # the abandoned request gave its slot back
            model.gate.set()
            assert (await first).status_code == 200
            assert (await client.post("/embed", json={"inputs": "one more"})).status_code == 200
        assert any(later_id in ids for ids in model.seen), "the recorder missed a computed request"
        assert not any(abandoned_id in ids for ids in model.seen)

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url))


class Sized(Gated):
    """A gated model that also records how many inputs each forward pass prepared."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.sizes: list[int] = []

    def prepare(self, token_ids, type_ids=None):
        self.sizes.append(len(token_ids))
        return super().prepare(token_ids, type_ids)


@pytest.mark.parametrize(("cap", "expected"), [(None, [32, 8]), (64, [40])])
def test_a_cpu_model_runs_at_most_32_inputs_a_forward_pass_unless_told_otherwise(minilm_path, cap, expected):
    loader, built = wrapping(Sized)
    settings = model_settings(minilm_path, max_batch_requests=cap)

    async def scenario(url: str) -> None:
        model = built[0]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            info = (await client.get("/info")).json()
            assert info["max_batch_requests"] == (cap or 32)
            # A first batch of 32 inputs, held in the forward pass; after it the packer looks at 128 queued inputs.
            held = await model.hold(client, {"inputs": [f"the backend is busy {i}" for i in range(32)]})
            assert model.sizes == [32]
            model.sizes.clear()
            bodies = [{"inputs": [f"short text {i} of {r}" for i in range(20)]} for r in range(2)]
            bulk = [asyncio.create_task(client.post("/embed", json=body)) for body in bodies]
            await eventually(lambda: server.runtime.queued == 40)
            model.gate.set()
            for response in [await held, *await asyncio.gather(*bulk)]:
                assert response.status_code == 200, response.text
        assert model.sizes == expected

    with run_server(settings, loader=loader) as server:
        asyncio.run(scenario(server.url))
