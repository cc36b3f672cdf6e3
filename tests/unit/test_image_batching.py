"""The packer with images (issue 14): a batch holds one modality, images cost the model's image tokens."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedserve.core.batching import BatchQueue, Job

pytestmark = pytest.mark.unit


def test_a_batch_holds_the_oldest_inputs_modality_only_and_images_cost_their_positions():
    loop = asyncio.new_event_loop()
    try:
        queue = BatchQueue(loop, max_batch_tokens=1000, max_batch_requests=None, overhead_tokens=100)
        job = Job(loop, 4)
        pixel = np.zeros((3, 4, 4), dtype=np.float32)
        queue.put(job, [[], [1, 2, 3], [], [4, 5]], pixels=[pixel, None, pixel, None], image_cost=17)
        assert queue.tokens_ahead == 17 + 3 + 17 + 2
        first = queue.take(block=False)
        assert first is not None
        assert [entry.index for entry in first.entries] == [0, 2]
        assert first.images is not None
        assert len(first.images) == 2
        assert (first.padded_tokens, first.real_tokens) == (34, 34)
        second = queue.take(block=False)
        assert second is not None
        assert second.images is None
        assert sorted(second.token_ids) == [[1, 2, 3], [4, 5]]
    finally:
        loop.close()


def test_images_batch_by_count_within_max_batch_tokens():
    loop = asyncio.new_event_loop()
    try:
        queue = BatchQueue(loop, max_batch_tokens=100, max_batch_requests=None)
        pixel = np.zeros((3, 4, 4), dtype=np.float32)
        queue.put(Job(loop, 7), [[]] * 7, pixels=[pixel] * 7, image_cost=30)
        sizes = []
        while (batch := queue.take(block=False)) is not None:
            sizes.append(len(batch.entries))
        assert sizes == [3, 3, 1]  # 3 x 30 fits in 100 tokens, 4 x 30 does not
    finally:
        loop.close()
