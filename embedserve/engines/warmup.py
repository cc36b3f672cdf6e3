"""Start-up measurement of a forward pass's cost, the same for every engine.

The packer weighs one more forward pass against the padding a merged batch would carry, so it needs the fixed cost
of a pass expressed in padded tokens; admission needs a first figure of the tokens per second the model computes,
before any request has been measured. Measuring also runs the first calls of each shape, which pay for lazy kernel
set-up, before any request does, and on a GPU a full-size batch shows an out-of-memory at boot.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ForwardCost:
    """``time = fixed_seconds + token_seconds * padded_tokens``, fitted at start-up; ``max_batch_tokens`` caps the
    overhead figure (a pass whose per-token cost cannot be told apart from noise is worth filling completely)."""

    fixed_seconds: float
    token_seconds: float
    max_batch_tokens: int

    @property
    def overhead_tokens(self) -> float:
        """The fixed cost in padded tokens: what one more forward pass costs, for the packer."""
        if self.token_seconds <= 0:
            return float(self.max_batch_tokens)
        return min(float(self.max_batch_tokens), self.fixed_seconds / self.token_seconds)

    @property
    def tokens_per_second(self) -> float | None:
        """Padded tokens per second of a large batch, or None when the fit could not measure it."""
        return 1.0 / self.token_seconds if self.token_seconds > 0 else None


class Steps(Protocol):
    """The three steps of a forward pass that every engine's runner has (see
    :class:`~embedserve.engines.base.InferenceModel`)."""

    def prepare(self, token_ids: Any, type_ids: Any = None) -> Any: ...
    def launch(self, prepared: Any) -> Any: ...
    def finish(self, launched: Any) -> Any: ...


def forward_cost(model: Steps, *, pad_id: int, max_len: int, max_batch_tokens: int, full_batch: bool) -> ForwardCost:
    """Time a one-input batch and a large one, fitting ``time = fixed + per_token * padded_tokens``. With
    ``full_batch`` (accelerators) the large batch is a full ``max_batch_tokens`` one, so an out-of-memory shows at
    start-up; otherwise it is 1024 tokens, enough to measure the per-token cost in well under a second on a CPU."""
    short = 16
    small = _typical_time(model, [[pad_id] * short])
    large_tokens = max_batch_tokens if full_batch else min(1024, max_batch_tokens)
    # A full batch is made of the longest inputs: attention's memory grows with the square of the length.
    length = min(max_len if full_batch else 128, max_len, large_tokens)
    batch = uniform_batch(pad_id, length, large_tokens)
    large = _typical_time(model, batch)
    per_token = (large - small) / max(1, length * len(batch) - short)
    if per_token <= 0:  # too little compute to tell apart: batching costs nothing, so always fill batches
        return ForwardCost(small, 0.0, max_batch_tokens)
    return ForwardCost(max(0.0, small - short * per_token), per_token, max_batch_tokens)


def uniform_batch(pad_id: int, length: int, tokens: int) -> list[list[int]]:
    """As many inputs of ``length`` pad tokens as fit ``tokens`` (at least one)."""
    return [[pad_id] * length] * max(1, tokens // length)


def _typical_time(model: Steps, batch: list[list[int]]) -> float:
    for _ in range(2):  # the first calls of a shape pay for lazy kernel set-up
        model.finish(model.launch(model.prepare(batch)))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.finish(model.launch(model.prepare(batch)))
        times.append(time.perf_counter() - start)
    return statistics.median(times)
