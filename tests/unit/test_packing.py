"""The packer: budget and count limits, the oldest input always goes, similar lengths go together."""

from __future__ import annotations

import random

import pytest

from embedserve.batching import pack

pytestmark = pytest.mark.unit


def cost(lengths: list[int], chosen: list[int]) -> int:
    return len(chosen) * max(lengths[i] for i in chosen)


def test_everything_goes_when_it_fits_the_budget():
    assert pack([5, 100, 7], max_tokens=300, max_requests=None) == [0, 1, 2]


def test_a_single_input_goes_alone():
    assert pack([40], max_tokens=64, max_requests=4) == [0]


def test_the_request_cap_limits_a_batch_that_fits_the_token_budget():
    chosen = pack([10] * 8, max_tokens=10_000, max_requests=3)
    assert len(chosen) == 3
    assert 0 in chosen


def test_an_input_longer_than_the_budget_still_runs_alone_instead_of_blocking_the_queue():
    assert pack([500, 3, 3], max_tokens=100, max_requests=None) == [0]


def test_similar_lengths_are_grouped_instead_of_padding_short_inputs_to_a_long_one():
    lengths = [10, 200, 12, 11, 199, 9, 198]
    chosen = sorted(pack(lengths, max_tokens=400, max_requests=None))
    assert chosen == [0, 2, 3, 5]  # the four short ones; the long ones would each cost 200 per input


def test_the_oldest_input_is_always_chosen_even_when_others_would_pack_better():
    lengths = [300] + [10] * 50
    chosen = pack(lengths, max_tokens=600, max_requests=None)
    assert 0 in chosen
    assert cost(lengths, chosen) <= 600


@pytest.mark.parametrize("seed", range(200))
def test_random_queues_respect_every_limit(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 256) for _ in range(rng.randint(1, 300))]
    max_tokens = rng.choice([256, 512, 2048, 16384])
    max_requests = rng.choice([None, 1, 4, 32])
    chosen = pack(lengths, max_tokens=max_tokens, max_requests=max_requests)
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
        chosen = pack([length for _, length in queue], max_tokens=1024, max_requests=16)
        served.extend(queue[i][0] for i in chosen)
        queue = [entry for k, entry in enumerate(queue) if k not in set(chosen)]
        rounds += 1
    assert sorted(served) == list(range(len(served)))
    assert rounds <= len(served)


def test_packing_wastes_less_padding_than_first_come_first_served():
    rng = random.Random(1)
    lengths = [rng.choice([8, 16, 200, 250]) for _ in range(400)]
    packed_waste = fifo_waste = 0
    queue = list(lengths)
    while queue:
        chosen = pack(queue, max_tokens=2048, max_requests=None)
        packed_waste += cost(queue, chosen) - sum(queue[i] for i in chosen)
        queue = [length for k, length in enumerate(queue) if k not in set(chosen)]
    queue = list(lengths)
    while queue:
        n = 1
        while n < len(queue) and (n + 1) * max(queue[: n + 1]) <= 2048:
            n += 1
        fifo_waste += n * max(queue[:n]) - sum(queue[:n])
        queue = queue[n:]
    assert packed_waste < fifo_waste / 2
