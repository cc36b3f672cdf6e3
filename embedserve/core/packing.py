"""Which queued inputs form the next batch: a pure function of their lengths and the batch limits (the queue that
calls it is :class:`~embedserve.core.batching.BatchQueue`)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate


def pack(lengths: Sequence[int], max_tokens: int, max_requests: int | None, overhead_tokens: float = 0.0) -> list[int]:
    """Choose which queued inputs form the next batch.

    ``lengths`` are token counts in arrival order; index 0 is the oldest input and is always chosen, so no input
    waits behind more than one batch of younger ones (fairness). A forward pass costs about ``overhead_tokens`` (its
    fixed cost, measured at start-up and expressed in tokens) plus ``count * longest`` padded tokens; the padded
    cost must stay within ``max_tokens`` and the count within ``max_requests``.

    Serving every input costs its real tokens plus, per batch, the overhead and the padding: the waste. Inputs are
    sorted by length, and among the runs of length neighbours that contain the oldest input, the one with the least
    waste per input wins (ties: the larger run). With a GPU's large overhead that means full batches whatever the
    lengths; with a CPU's small one, batches of similar lengths. Returns indices into ``lengths``.
    """
    n = len(lengths)
    cap = n if max_requests is None else min(n, max_requests)
    order = sorted(range(n), key=lengths.__getitem__)  # stable: equal lengths stay oldest-first
    head = order.index(0)
    ls = [lengths[i] for i in order]
    prefix = [0, *accumulate(ls)]
    best, best_key = (head, head), (float("-inf"), 0)
    for end in range(head, n):
        longest = ls[end]
        room = min(cap, max_tokens // longest)
        if end - head + 1 > room:
            break  # longer runs only get tighter from here on and can no longer reach the oldest input
        start = head
        waste = overhead_tokens + (end - start + 1) * longest - (prefix[end + 1] - prefix[start])
        # Take in shorter inputs while their padding costs less than the waste each input carries so far; inputs
        # only get shorter to the left, so the first one that does not pay its way ends the run.
        while start > 0 and end - start + 1 < room and longest - ls[start - 1] <= waste / (end - start + 1):
            start -= 1
            waste += longest - ls[start]
        count = end - start + 1
        key = (-waste / count, count)
        if key > best_key:
            best, best_key = (start, end), key
    return [order[k] for k in range(best[0], best[1] + 1)]
