"""Start-up measurement of a forward pass's fixed cost, the same for every engine.

The packer weighs one more forward pass against the padding a merged batch would carry, so it needs the fixed cost
of a pass expressed in padded tokens. Measuring it also runs the first calls of each shape, which pay for lazy kernel
set-up, before any request does, and on a GPU a full-size batch shows an out-of-memory at boot.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Protocol


class Steps(Protocol):
    """The three steps of a forward pass that every engine's runner has (see
    :class:`~embedserve.engines.base.InferenceModel`)."""

    def prepare(self, token_ids: Any, type_ids: Any = None) -> Any: ...
    def launch(self, prepared: Any) -> Any: ...
    def finish(self, launched: Any) -> Any: ...


def fixed_cost_tokens(model: Steps, *, pad_id: int, max_len: int, max_batch_tokens: int, full_batch: bool) -> float:
    """Time a one-input batch and a large one, fitting ``time = fixed + per_token * padded_tokens``; returns
    ``fixed / per_token``. With ``full_batch`` (accelerators) the large batch is a full ``max_batch_tokens`` one, so
    an out-of-memory shows at start-up; otherwise it is 1024 tokens, enough to measure the per-token cost in well
    under a second on a CPU."""
    short = 16
    small = _typical_time(model, [[pad_id] * short])
    large_tokens = max_batch_tokens if full_batch else min(1024, max_batch_tokens)
    length = min(128, max_len, large_tokens)
    batch = [[pad_id] * length] * max(1, large_tokens // length)
    large = _typical_time(model, batch)
    per_token = (large - small) / max(1, length * len(batch) - short)
    if per_token <= 0:  # too little compute to tell apart: batching costs nothing, so always fill batches
        return float(max_batch_tokens)
    return min(float(max_batch_tokens), max(0.0, small - short * per_token) / per_token)


def _typical_time(model: Steps, batch: list[list[int]]) -> float:
    for _ in range(2):  # the first calls of a shape pay for lazy kernel set-up
        model.finish(model.launch(model.prepare(batch)))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.finish(model.launch(model.prepare(batch)))
        times.append(time.perf_counter() - start)
    return statistics.median(times)
