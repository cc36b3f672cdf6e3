"""What a run measures: the cell matrix of each mode (full, quick), the cells, and the texts of each length mix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.texts import TokenCounter, make_texts, model_max_length

SEED = 20240611
POOL_SIZE = 1024  # distinct texts per mix; 32-text requests take consecutive slices of them
BATCH = 32  # texts in a "batch" request


@dataclass(frozen=True)
class Profile:
    """Durations and the cell matrix of a run mode."""

    name: str
    warmup_s: float
    duration_s: float
    grace_s: float
    settle_s: float
    # (mix, texts per request, concurrency) of the closed-loop cells, in run order.
    closed: tuple[tuple[str, int, int], ...]
    # Open loop (single text, mixed lengths): fractions of embedserve's closed-loop capacity, and fixed rates.
    open_fractions: tuple[float, ...]
    open_fixed: tuple[float, ...]
    overload_s: float
    ceiling_texts: dict[str, int]
    direct_reps: int


_SWEEP = tuple(("mixed", 1, c) for c in (1, 8, 32, 128))

FULL = Profile(
    name="full",
    # Long enough for the slowest closed-loop cells (c=128, 32-text requests: over a second per request on 2 cores)
    # to be past their first wave of requests when the window opens.
    warmup_s=2.0,
    duration_s=6.0,
    grace_s=8.0,
    settle_s=15.0,
    closed=(
        *_SWEEP,
        ("short", 1, 1),
        ("short", 1, 32),
        ("long", 1, 32),
        ("short", BATCH, 8),
        ("mixed", BATCH, 1),
        ("mixed", BATCH, 8),
        ("long", BATCH, 1),
    ),
    open_fractions=(0.25, 0.5, 0.9),
    open_fixed=(20.0, 60.0),
    overload_s=60.0,  # long enough that a leak of a few MiB/s shows between the middle and last thirds
    ceiling_texts={"short": 512, "mixed": 256, "long": 64},
    direct_reps=50,
)

QUICK = Profile(
    name="quick",
    warmup_s=0.5,
    duration_s=2.0,
    grace_s=4.0,
    settle_s=6.0,
    closed=(*_SWEEP, ("short", 1, 1), ("mixed", BATCH, 1)),
    open_fractions=(0.5, 0.9),
    open_fixed=(20.0,),
    overload_s=5.0,
    ceiling_texts={"mixed": 128},
    direct_reps=50,
)


@dataclass(frozen=True)
class Cell:
    """One measurement: a load shape against one server."""

    mix: str
    texts_per_request: int
    concurrency: int = 0  # > 0: closed loop with this many users
    rate: float = 0.0  # open loop: mean requests/s (Poisson)
    rate_note: str = ""

    @property
    def mode(self) -> str:
        """'closed' or 'open'."""
        return "closed" if self.concurrency > 0 else "open"

    @property
    def label(self) -> str:
        """Short human description."""
        shape = "single" if self.texts_per_request == 1 else f"{self.texts_per_request}-text"
        load = f"c={self.concurrency}" if self.concurrency else f"{self.rate:.1f} req/s ({self.rate_note})"
        return f"{self.mode} {load} {shape} {self.mix}"


@dataclass
class Workload:
    """The texts of every mix and their token counts (counted once, truncated to the model's maximum)."""

    texts: dict[str, list[str]]
    tokens: dict[str, list[int]]
    untruncated: dict[str, list[int]]
    # The texts cut where the model's truncation cuts them (same tokens), for servers that truncate elsewhere.
    clipped: dict[str, list[str]] = field(default_factory=dict)

    def plan(self, mix: str, per_request: int) -> list[list[int]]:
        """Text indices of each distinct request of a shape."""
        count = len(self.texts[mix])
        return [list(range(i, i + per_request)) for i in range(0, count - per_request + 1, per_request)]

    def describe(self) -> dict[str, Any]:
        """Per-mix word and token statistics for results.json."""
        out: dict[str, Any] = {}
        for mix, texts in self.texts.items():
            words = [len(t.split()) for t in texts]
            tokens = self.tokens[mix]
            out[mix] = {
                "texts": len(texts),
                "words": [min(words), max(words)],
                "tokens_mean": sum(tokens) / len(tokens),
                "tokens": [min(tokens), max(tokens)],
                "untruncated_tokens": [min(self.untruncated[mix]), max(self.untruncated[mix])],
            }
        return out


def build_workload(model: Path, mixes: Sequence[str]) -> Workload:
    """Generate the texts of each mix from the fixed seed and count their tokens."""
    counter = TokenCounter(model_max_length(model), model / "tokenizer.json")
    texts: dict[str, list[str]] = {}
    tokens: dict[str, list[int]] = {}
    untruncated: dict[str, list[int]] = {}
    for mix in mixes:
        texts[mix] = make_texts(mix, POOL_SIZE, SEED)
        tokens[mix], untruncated[mix] = counter.count(texts[mix])
    clipped = {mix: counter.clip(texts[mix]) for mix in mixes}
    return Workload(texts, tokens, untruncated, clipped)
