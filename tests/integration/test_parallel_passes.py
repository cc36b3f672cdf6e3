"""Parallel passes on OpenVINO with the real MiniLM model: while more than one batch waits, two batches compute at
once on the model's streams, each request still gets its own vector (equal to the one computed alone on every
thread), a lone batch runs alone, and a failing pass fails only its own batch. The wrapper around the real model
only counts passes and injects the one failure."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from embedserve.core.backend import COMPUTE_NICENESS
from embedserve.settings import CacheSettings
from tests.conftest import model_settings, run_server
from tests.wrappers import Parallel, wrapping

pytestmark = pytest.mark.integration

WORDS = ["river", "stone", "lantern", "harbor", "meadow", "copper", "violet", "summit", "orchard", "thunder"]


def texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"text {i}: " + " ".join(rng.choices(WORDS, k=rng.choice([2, 6, 15, 40, 90]))) for i in range(count)]


def settings(path, **overrides):  # type: ignore[no-untyped-def]
    values = {"engine": "openvino", "intra_op_threads": 2, "max_batch_requests": 4, "parallel_passes": None}
    return model_settings(path, **{**values, **overrides})


def test_batches_compute_side_by_side_and_each_request_gets_the_vector_computed_alone(minilm_path):
    loader, built = wrapping(Parallel)
    inputs = texts(64, seed=3)

    async def scenario(url: str) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            assert (await client.get("/info")).json()["engine"]["passes"] == 2  # OpenVINO's choice for 2 threads
            together = await asyncio.gather(*(client.post("/embed", json={"inputs": t}) for t in inputs))
            model = built[0]
            assert model.most_at_once == 2, "no two passes ever computed at once"
            alone_before = model.alone
            for text, response in zip(inputs, together, strict=True):
                assert response.status_code == 200, response.text
                alone = await client.post("/embed", json={"inputs": text})  # nothing else waits: every thread
                got, expected = np.array(response.json()[0]), np.array(alone.json()[0])
                assert float(got @ expected) >= 0.99999, text
            assert model.alone == alone_before + len(inputs)

    # No cache: the second request for a text must be computed again, alone.
    with run_server(settings(minilm_path), loader=loader, cache=CacheSettings(cache_bytes=0)) as server:
        asyncio.run(scenario(server.url))
        assert server.runtime.admission.in_use == 0


def test_a_failing_parallel_pass_fails_only_its_own_batch(minilm_path):
    poison_id = Tokenizer.from_file(str(minilm_path / "tokenizer.json")).token_to_id("volcano")
    loader, built = wrapping(lambda inner: Parallel(inner, poison_id))
    inputs = texts(24, seed=5)
    inputs[9] = "the volcano erupted over the harbor"

    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            answers = await asyncio.gather(*(client.post("/embed", json={"inputs": t}) for t in inputs))
            assert answers[9].status_code == 500
            assert "secret" not in answers[9].json()["error"]
            # One input per batch: every other request is computed.
            assert all(a.status_code == 200 for i, a in enumerate(answers) if i != 9)
            assert built[0].started > 0
            later = await client.post("/embed", json={"inputs": "life goes on"})
            assert later.status_code == 200

    with run_server(settings(minilm_path, max_batch_requests=1), loader=loader) as server:
        asyncio.run(scenario(server.url))
        assert server.runtime.admission.in_use == 0


def test_parallel_passes_1_computes_one_batch_at_a_time(minilm_path):
    with run_server(settings(minilm_path, parallel_passes=1)) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/info").json()["engine"]["passes"] == 1
        assert client.post("/embed", json={"inputs": "one at a time"}).status_code == 200


def _nice(tid: str) -> int:
    return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_the_backend_and_engine_threads_run_at_a_lower_priority_than_the_event_loop(minilm_path):
    with run_server(settings(minilm_path)) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/embed", json={"inputs": ["one", "two"]}).status_code == 200
        main, lowered = _nice(str(os.getpid())), min(19, _nice(str(os.getpid())) + COMPUTE_NICENESS)
        named = {t.name: str(t.native_id) for t in threading.enumerate()}
        backend = [tid for name, tid in named.items() if name.startswith("embedserve-backend")]
        tokenizers = [tid for name, tid in named.items() if name.startswith("embedserve-tokenize")]
        assert backend
        assert tokenizers
        assert all(_nice(tid) == lowered for tid in backend)
        assert all(_nice(tid) == main for tid in tokenizers)
        # OpenVINO's own threads (not Python's) were started from the backend thread and inherit its priority.
        python = set(named.values())
        engine = [tid for tid in os.listdir("/proc/self/task") if tid not in python and _nice(tid) == lowered]
        assert engine
