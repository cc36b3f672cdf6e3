"""The embedding cache's parts: keys, the byte-bounded LRU, Redis values, and the lookup's single flight."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from embedserve.core.cache import ENTRY_OVERHEAD_BYTES, Entry, LocalCache, input_key, model_scope
from embedserve.core.embedding_cache import EmbeddingCache
from embedserve.core.shared_cache import decode, encode
from embedserve.engines.base import ModelInfo

pytestmark = pytest.mark.unit

INFO = ModelInfo(
    model_id="org/model", revision="abc123", path="/m", architecture="BertModel", kind="embedding", pooling="mean",
    dim=4, max_input_length=256, dtype="float32", device="cpu", tokenizer_json='{"version": "1.0"}', engine="onnx",
)  # fmt: skip


def entry(value: float, tokens: int = 3) -> Entry:
    return Entry.of(np.full(4, value, dtype=np.float32), tokens)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_least_recently_used_entries_go_first_once_the_bytes_are_used_up():
    size = entry(0).nbytes
    assert size == 16 + ENTRY_OVERHEAD_BYTES
    cache = LocalCache(max_bytes=3 * size)
    for key in (b"a", b"b", b"c"):
        cache.put(key, entry(0))
    assert cache.get(b"a") is not None  # now the most recently used
    cache.put(b"d", entry(0))
    assert cache.get(b"b") is None
    assert [cache.get(k) is not None for k in (b"a", b"c", b"d")] == [True, True, True]
    assert (cache.bytes, cache.evictions, len(cache)) == (3 * size, 1, 3)


def test_an_entry_larger_than_the_whole_cache_is_not_stored():
    cache = LocalCache(max_bytes=100)
    cache.put(b"a", entry(1))
    assert (cache.get(b"a"), cache.bytes, cache.evictions) == (None, 0, 0)


def test_entries_expire_after_the_ttl():
    clock = Clock()
    cache = LocalCache(max_bytes=10_000, ttl=5.0, clock=clock)
    cache.put(b"a", entry(1))
    clock.now = 4.9
    assert cache.get(b"a") is not None
    clock.now = 5.0
    assert cache.get(b"a") is None
    assert cache.bytes == 0


def test_an_entry_owns_a_read_only_copy_of_its_row():
    batch = np.ones((2, 4), dtype=np.float32)
    stored = Entry.of(batch[0], 3)
    batch[0] = 7
    assert stored.vector.tolist() == [1, 1, 1, 1]
    assert stored.vector.base is None
    with pytest.raises(ValueError, match="read-only"):
        stored.vector[0] = 2


def test_keys_change_with_everything_that_decides_the_vector():
    scope = model_scope(INFO, 256)
    key = input_key(scope, "text", truncate=True, direction="right")
    assert len(key) == 32
    assert key == input_key(model_scope(INFO, 256), "text", truncate=True, direction="right")
    others = {
        input_key(scope, "text ", truncate=True, direction="right"),
        input_key(scope, "text", truncate=False, direction="right"),
        input_key(scope, "text", truncate=True, direction="left"),
        input_key(model_scope(INFO, 128), "text", truncate=True, direction="right"),
    }
    for change in ({"revision": "def456"}, {"engine": "torch"}, {"dtype": "bfloat16"}, {"quantize": "int8"},
                   {"pooling": "cls"}, {"device": "cuda:0"}, {"model_id": "org/other"},
                   {"tokenizer_json": '{"version": "2.0"}'}):  # fmt: skip
        others.add(input_key(model_scope(replace(INFO, **change), 256), "text", truncate=True, direction="right"))
    assert key not in others
    assert len(others) == 12
    # The GPU index is not part of the key: cuda:0 and cuda:1 compute the same vectors.
    on = {device: model_scope(replace(INFO, device=device), 256) for device in ("cuda:0", "cuda:1")}
    assert on["cuda:0"] == on["cuda:1"]


def test_a_redis_value_round_trips_and_a_malformed_one_reads_as_a_miss():
    stored = Entry.of(np.array([0.5, -1.25, 3.0], dtype=np.float32), 17)
    back = decode(encode(stored))
    assert back is not None
    assert back.tokens == 17
    assert back.vector.tolist() == [0.5, -1.25, 3.0]
    assert not back.vector.flags.writeable
    assert decode(b"") is None
    assert decode(encode(stored)[:-1]) is None
    assert decode(encode(stored)[:4]) is None


def test_a_request_computes_each_distinct_missing_input_once_and_keeps_input_order():
    cache = EmbeddingCache(LocalCache(1_000_000))
    asked: list[list[int]] = []

    async def compute(indices: list[int]) -> list[Entry]:
        asked.append(indices)
        return [entry(float(i)) for i in indices]

    async def scenario() -> None:
        await cache.lookup("m", [b"x"], compute)  # index 0 -> value 0
        found = await cache.lookup("m", [b"y", b"x", b"y", b"z"], compute)
        assert [e.vector[0] for e in found.entries] == [0.0, 0.0, 0.0, 3.0]
        assert found.hits == 2  # x from the cache, the second y from the first

    asyncio.run(scenario())
    assert asked == [[0], [0, 3]]


def test_requests_that_joined_a_failed_flight_compute_the_input_themselves():
    cache = EmbeddingCache(LocalCache(1_000_000))
    started = asyncio.Event()
    release = asyncio.Event()

    async def failing(indices: list[int]) -> list[Entry]:
        started.set()
        await release.wait()
        raise RuntimeError("the leader's batch failed")

    async def working(indices: list[int]) -> list[Entry]:
        return [entry(9.0) for _ in indices]

    async def scenario() -> None:
        leader = asyncio.create_task(cache.lookup("m", [b"k"], failing))
        await started.wait()
        follower = asyncio.create_task(cache.lookup("m", [b"k"], working))
        await asyncio.sleep(0)  # one turn of the loop: the follower runs up to awaiting the flight
        assert cache.waiting == 1
        release.set()
        with pytest.raises(RuntimeError):
            await leader
        found = await follower
        assert found.entries[0].vector[0] == 9.0
        assert found.hits == 0
        assert cache.waiting == 0

    asyncio.run(scenario())
