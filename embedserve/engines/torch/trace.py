"""TorchScript on a CPU: the torch engine's forward pass without the Python around every operation.

An eager transformers forward pass runs hundreds of small Python calls (modules, mask building, dispatch) before
and between the matrix products; on a CPU that is a fixed few milliseconds per pass, whatever the batch: measured
on 2 cores with all-MiniLM-L6-v2 in float32, one 16-token input took 11.2 ms eager and 7.9 ms as a frozen trace,
and a batch of 6 x 80 tokens 81.0 and 72.1 ms. A server's batches are small (a few inputs of similar length), so
that fixed cost is a share of every pass.

A trace records the operations of one call and replays them for any batch size and length, which holds for a
model whose operations do not depend on the shapes or values of its inputs in Python. That is checked, never
assumed: the trace is taken on one padded batch and compared with the eager model on batches of other sizes and
lengths (a lone unpadded input among them); a model that cannot be traced, or whose trace differs, keeps eager. The
frozen trace shares the model's weights (about 180 MiB more for a bge-large-sized model, 1.3 GB of weights). Only
runners that call the model with ids and mask alone (dense and sparse) are traced, and only on a CPU. Not tried on
CUDA, where the passes are queued asynchronously and Python's cost overlaps the GPU's work.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import torch

from embedserve.engines.torch.runner import Runner

log = logging.getLogger("embedserve.engines")

TRACE_SHAPE = (3, 24)
"""Rows and tokens of the batch the trace is taken on; its first row is padded."""

CHECK_SHAPES = ((1, 7), (5, 41), (2, 130))
"""Batches the trace is compared with the eager model on, each capped at the model's maximum length: other sizes
and lengths than :data:`TRACE_SHAPE`, one of them a lone input without padding."""

TOLERANCE = 1e-4
"""Largest difference allowed between the trace's and the eager model's outputs at real tokens, relative to the
largest output value. Measured: exactly 0 for the six tiny architectures of the test suite and all-MiniLM-L6-v2 in
float32, and for all-MiniLM-L6-v2 in bfloat16."""


class _Call(torch.nn.Module):
    """The runner's call of the model as a module of two tensors (what tracing takes)."""

    def __init__(self, runner: Runner) -> None:
        super().__init__()
        self.runner = runner
        self.model = runner.model  # registered as a submodule, so the trace sees its weights

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.runner.eager_encode(ids, mask)


def trace(runner: Runner) -> str | None:
    """Replace ``runner.encode`` with a frozen, checked trace of it. Returns None when it did, else why not (the
    runner keeps its eager call)."""
    began = time.perf_counter()
    vocab = int(getattr(runner.model.config, "vocab_size", 0) or 0)
    if vocab < 2:
        return "the model's configuration has no vocabulary size to draw example inputs from"
    generator = torch.Generator().manual_seed(0)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about every Python value it records as a constant; the check below is what decides.
            warnings.simplefilter("ignore")
            example = _batch(*TRACE_SHAPE, runner, vocab, generator)
            traced: Any = torch.jit.freeze(torch.jit.trace(_Call(runner).eval(), example, strict=False))  # type: ignore[no-untyped-call]
            with torch.inference_mode():
                for rows, length in CHECK_SHAPES:
                    ids, mask = _batch(rows, min(length, runner.max_len), runner, vocab, generator)
                    expected, got = runner.eager_encode(ids, mask), traced(ids, mask)
                    reason = _difference(expected, got, mask)
                    if reason is not None:
                        return f"its trace differs from the eager model on {rows} x {ids.shape[1]} tokens: {reason}"
    except Exception as exc:  # a model the tracer cannot record: it keeps serving eagerly
        return f"it cannot be traced ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"

    runner.encode = traced
    log.info("forward pass traced with TorchScript and checked against the eager model in %.1f s",
             time.perf_counter() - began)  # fmt: skip
    return None


def _batch(
    rows: int, length: int, runner: Runner, vocab: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids (a real tokenizer's first and last ids do not matter to the check) and a mask whose first
    row, when there are several, keeps only its first half."""
    ids = torch.randint(min(100, vocab - 1), vocab, (rows, length), generator=generator)
    mask = torch.ones(rows, length, dtype=torch.long)
    if rows > 1:
        mask[0, max(1, length // 2) :] = 0
        ids[0, max(1, length // 2) :] = runner.pad_id
    return ids.to(runner.device), mask.to(runner.device)


def _difference(expected: torch.Tensor, got: torch.Tensor, mask: torch.Tensor) -> str | None:
    """Why two outputs differ beyond :data:`TOLERANCE` (at real tokens, for an output per token), or None when they
    agree."""
    if expected.shape != got.shape:
        return f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    real = mask.bool()
    per_token = expected.shape[: real.dim()] == real.shape
    a, b = (expected[real], got[real]) if per_token else (expected, got)
    a, b = a.float(), b.float()
    scale = max(1.0, float(a.abs().max()))
    worst = float((a - b).abs().max()) / scale
    if not worst <= TOLERANCE:  # also catches NaN
        return f"largest relative difference {worst:.2e} (tolerance {TOLERANCE:g})"
    return None
