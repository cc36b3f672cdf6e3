"""The packer: budget and count limits, the oldest input always goes, and the batch overhead decides between
filling batches (GPU-like) and keeping similar lengths together (CPU-like)."""

from __future__ import annotations

import asyncio
import random

import pytest

from embedserve.core.batching import BatchQueue, Job
from embedserve.core.packing import pack
from embedserve.engines.base import padded_length, shape_rows

pytestmark = pytest.mark.unit


def cost(lengths: list[int], chosen: list[int]) -> int:
    return len(chosen) * max(lengths[i] for i in chosen)


GPU_LIKE = 5000.0
CPU_LIKE = 48.0


def test_with_a_large_batch_overhead_everything_that_fits_goes():
    assert sorted(pack([5, 100, 7], max_tokens=300, max_requests=None, overhead_tokens=GPU_LIKE)) == [0, 1, 2]


def test_with_a_small_batch_overhead_a_short_input_is_not_padded_to_a_long_one():
    assert sorted(pack([5, 100, 7], max_tokens=300, max_requests=None, overhead_tokens=CPU_LIKE)) == [0, 2]


def test_a_single_input_goes_alone():
    assert pack([40], max_tokens=64, max_requests=4, overhead_tokens=CPU_LIKE) == [0]


def test_equal_lengths_all_go_even_without_overhead():
    assert sorted(pack([10] * 8, max_tokens=10_000, max_requests=None)) == list(range(8))


def test_the_request_cap_limits_a_batch_that_fits_the_token_budget():
    chosen = pack([10] * 8, max_tokens=10_000, max_requests=3, overhead_tokens=GPU_LIKE)
    assert len(chosen) == 3
    assert 0 in chosen


def test_the_token_budget_limits_a_batch_whatever_the_overhead():
    chosen = pack([100] * 8, max_tokens=350, max_requests=None, overhead_tokens=GPU_LIKE)
    assert len(chosen) == 3


def test_an_input_longer_than_the_budget_still_runs_alone_instead_of_blocking_the_queue():
    assert pack([500, 3, 3], max_tokens=100, max_requests=None, overhead_tokens=GPU_LIKE) == [0]


def test_similar_lengths_are_grouped_instead_of_padding_short_inputs_to_a_long_one():
    lengths = [10, 200, 12, 11, 199, 9, 198]
    chosen = sorted(pack(lengths, max_tokens=4000, max_requests=None, overhead_tokens=CPU_LIKE))
    assert chosen == [0, 2, 3, 5]  # the four short ones; the long ones would each cost 200 per input


def test_the_oldest_input_is_always_chosen_even_when_others_would_pack_better():
    lengths = [300] + [10] * 50
    chosen = pack(lengths, max_tokens=600, max_requests=None, overhead_tokens=CPU_LIKE)
    assert 0 in chosen
    assert cost(lengths, chosen) <= 600


@pytest.mark.parametrize("seed", range(200))
def test_random_queues_respect_every_limit(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 256) for _ in range(rng.randint(1, 300))]
    max_tokens = rng.choice([256, 512, 2048, 16384])
    max_requests = rng.choice([None, 1, 4, 32])
    overhead = rng.choice([0.0, CPU_LIKE, GPU_LIKE])
    chosen = pack(lengths, max_tokens=max_tokens, max_requests=max_requests, overhead_tokens=overhead)
    assert 0 in chosen
    assert len(set(chosen)) == len(chosen)
    assert all(0 <= i < len(lengths) for i in chosen)
    assert cost(lengths, chosen) <= max_tokens
    if max_requests is not None:
        assert len(chosen) <= max_requests


@pytest.mark.parametrize("seed", range(50))
def test_every_input_is_served_by_repeated_packing(seed):
    rng = random.Random(seed)
    queue = [(i, rng.randint(1, 256)) for i in range(rng.randint(1, 200))]
    served: list[int] = []
    rounds = 0
    while queue:
        chosen = pack([length for _, length in queue], max_tokens=1024, max_requests=16, overhead_tokens=CPU_LIKE)
        served.extend(queue[i][0] for i in chosen)
        queue = [entry for k, entry in enumerate(queue) if k not in set(chosen)]
        rounds += 1
    assert sorted(served) == list(range(len(served)))
    assert rounds <= len(served)


def modelled_cost(lengths: list[int], overhead: float, choose) -> float:
    """Total cost (overhead + padded tokens per batch) of serving a queue batch by batch with ``choose``."""
    total, queue = 0.0, list(lengths)
    while queue:
        chosen = choose(queue)
        total += overhead + cost(queue, chosen)
        queue = [length for k, length in enumerate(queue) if k not in set(chosen)]
    return total


def first_come_first_served(queue: list[int], max_tokens: int) -> list[int]:
    n = 1
    while n < len(queue) and (n + 1) * max(queue[: n + 1]) <= max_tokens:
        n += 1
    return list(range(n))


@pytest.mark.parametrize("overhead", [CPU_LIKE, 500.0, GPU_LIKE])
def test_packing_costs_less_than_first_come_first_served(overhead):
    rng = random.Random(1)
    lengths = [rng.randint(5, 160) for _ in range(400)]
    packed = modelled_cost(lengths, overhead, lambda q: pack(q, 4096, None, overhead))
    fifo = modelled_cost(lengths, overhead, lambda q: first_come_first_served(q, 4096))
    assert packed < 0.8 * fifo


def test_a_padded_length_is_the_next_multiple_but_never_past_the_cap_nor_below_the_longest_input():
    assert [padded_length(n, 8, 256) for n in (1, 8, 9, 17, 250, 256)] == [8, 8, 16, 24, 256, 256]
    assert padded_length(509, 8, 510) == 510  # the model's limit is not a multiple of 8
    assert padded_length(17, 1, 256) == 17
    assert padded_length(17, 8, 256, rows=1) == 17  # a short single input keeps its length
    assert [padded_length(n, 8, 256, rows=1) for n in (32, 33, 41, 250)] == [32, 40, 48, 256]  # a longer one pads
    assert padded_length(300, 8, 256) == 300  # never shorter than the input: the cap does not cut it


def test_with_a_length_multiple_inputs_that_pad_alike_batch_together_and_the_batch_counts_its_padded_width():
    loop = asyncio.new_event_loop()
    try:
        exact = BatchQueue(loop, max_batch_tokens=1000, max_batch_requests=None, overhead_tokens=0.0)
        rounded = BatchQueue(loop, max_batch_tokens=1000, max_batch_requests=None, overhead_tokens=0.0,
                             length_multiple=8, max_length=256)  # fmt: skip
        for queue in (exact, rounded):
            queue.put(Job(loop, 3), [[1] * 17, [1] * 23, [1] * 40])
        alone = exact.take(block=False)
        assert alone is not None
        assert (len(alone.entries), alone.width) == (1, 17)  # 17 and 23 differ: exact lengths keep them apart
        together = rounded.take(block=False)
        assert together is not None
        assert sorted(len(ids) for ids in together.token_ids) == [17, 23]  # both pad to 24: no padding cost
        assert (together.width, together.padded_tokens, together.real_tokens) == (24, 48, 40)
        last = rounded.take(block=False)
        assert last is not None
        assert last.width == 40  # alone, and a multiple of 8 already
        rounded.put(Job(loop, 2), [[1] * 33, [1] * 35])
        pair = rounded.take(block=False)
        assert pair is not None
        assert (len(pair.entries), pair.width) == (2, 40)
    finally:
        loop.close()


def test_an_engine_that_compiles_per_shape_gets_batches_of_fewer_row_counts():
    assert [shape_rows(n) for n in (1, 5, 8, 9, 11, 16, 17, 23, 32, 33, 47)] == [1, 5, 8, 8, 10, 16, 16, 20, 32, 32, 40]
    assert len({shape_rows(n) for n in range(1, 33)}) == 16


def test_inputs_a_batch_of_a_shape_compiling_engine_leaves_out_ride_the_next_one_and_the_oldest_always_goes():
    loop = asyncio.new_event_loop()
    try:
        for oldest_length in (9, 24):  # the oldest among the shortest, then the oldest the longest of the batch
            queue = BatchQueue(loop, max_batch_tokens=10_000, max_batch_requests=None, overhead_tokens=GPU_LIKE,
                               length_multiple=8, max_length=256)  # fmt: skip
            oldest = Job(loop, 1)
            queue.put(oldest, [[1] * oldest_length])
            queue.put(Job(loop, 10), [[1] * 9] * 10)
            first = queue.take(block=False)
            assert first is not None
            assert len(first.entries) == 10  # 11 fit, but 10 is the row count at most 11
            assert any(entry.job is oldest for entry in first.entries)
            rest = queue.take(block=False)
            assert rest is not None
            assert len(rest.entries) == 1
            assert rest.entries[0].job is not oldest
        exact = BatchQueue(loop, max_batch_tokens=10_000, max_batch_requests=None, overhead_tokens=GPU_LIKE)
        exact.put(Job(loop, 11), [[1] * 9] * 11)
        whole = exact.take(block=False)
        assert whole is not None
        assert len(whole.entries) == 11  # an engine that keeps exact lengths takes any row count
    finally:
        loop.close()
