"""The shared half of every graph engine (ONNX Runtime, OpenVINO): batches padded into numpy arrays named as the
graph's inputs, and the graph's output pooled per model kind in numpy.

A graph engine only says how to run its compiled graph on a dict of arrays (:meth:`ArrayRunner.run`); padding,
pooling (CLS, mean, last token), SPLADE rows, logits and the warm-up are the same for all of them. No inference
runtime is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from embedserve.engines.base import EXACT_SINGLE_LENGTH, padded_length
from embedserve.engines.describe import ModelDescription
from embedserve.engines.warmup import ForwardCost, forward_cost, uniform_batch

SPARSE_LOGITS_BUDGET = 64 * 2**20
"""Most masked-LM logits (inputs x tokens x vocabulary) a SPLADE forward pass materializes at once, in any engine:
256 MiB of float32. A batch of 64 inputs of 256 tokens over a 30k vocabulary would need 2 GiB, so bigger batches run
in slices of inputs."""


@dataclass(frozen=True, slots=True)
class Padded:
    """A batch as graph inputs, plus the mask and lengths the pooling needs."""

    feeds: dict[str, np.ndarray]
    mask: np.ndarray
    lengths: np.ndarray


class ArrayRunner:
    """prepare -> launch -> finish over numpy arrays; subclasses implement :meth:`run`.

    ``output`` is what the graph returns: ``hidden`` (inputs x tokens x hidden, pooled here), ``sparse`` (inputs x
    vocabulary SPLADE weights, pooled inside the graph) or ``logits`` (inputs x labels).
    """

    def __init__(
        self, *, input_names: Sequence[str], output: str, pooling: str, pad_id: int, max_len: int, vocab: int = 0,
        length_multiple: int = 1,
    ) -> None:  # fmt: skip
        unknown = set(input_names) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise ValueError(f"the graph takes inputs embedserve cannot provide: {', '.join(sorted(unknown))}")
        self.input_names = tuple(input_names)
        self.output = output
        self.pooling = pooling
        self.pad_id = pad_id
        self.max_len = max_len
        self.vocab = vocab
        self.length_multiple = length_multiple
        """Batches are padded to a multiple of this many tokens (:func:`~embedserve.engines.base.padded_length`)."""
        self.express_factory: Callable[[], ArrayRunner] | None = None
        """Builds the express lane's runner (:meth:`express`); set by engines that can run two at once."""

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's (first) output for one batch of inputs."""
        raise NotImplementedError

    def prepare(self, token_ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None) -> Padded:
        """Right-pad into int64 arrays named as the graph's inputs (token types are zeros for single texts)."""
        lengths = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))
        total = int(lengths.sum())
        width = padded_length(int(lengths.max()), self.length_multiple, self.max_len, len(token_ids))
        mask = np.arange(width) < lengths[:, None]
        ids = np.full(mask.shape, self.pad_id, dtype=np.int64)
        ids[mask] = np.fromiter(chain.from_iterable(token_ids), dtype=np.int64, count=total)
        types = np.zeros(mask.shape, dtype=np.int64)
        if type_ids is not None:
            types[mask] = np.fromiter(chain.from_iterable(type_ids), dtype=np.int64, count=total)
        arrays = {"input_ids": ids, "attention_mask": mask.astype(np.int64), "token_type_ids": types}
        return Padded({name: arrays[name] for name in self.input_names}, mask, lengths)

    def launch(self, prepared: Padded) -> tuple[np.ndarray, Padded]:
        """Run the graph (synchronously: CPU engines compute on the calling thread)."""
        if self.output != "sparse":
            return self.run(prepared.feeds), prepared
        rows, length = prepared.mask.shape
        step = max(1, SPARSE_LOGITS_BUDGET // max(1, length * self.vocab))
        if step >= rows:
            return self.run(prepared.feeds), prepared
        parts = [self.run({k: v[i : i + step] for k, v in prepared.feeds.items()}) for i in range(0, rows, step)]
        return np.concatenate(parts), prepared

    def finish(self, launched: tuple[np.ndarray, Padded]) -> Iterable[Any]:
        """One result per input: a pooled float32 vector, a sparse (indices, values) pair, or a logits row."""
        out, prepared = launched
        out = np.asarray(out, dtype=np.float32)
        if self.output == "sparse":
            return sparse_rows(out)
        if self.output == "logits":
            return out
        return pool(out, self.pooling, prepared.mask, prepared.lengths)

    def warmup(self, max_batch_tokens: int) -> ForwardCost:
        """The cost of a forward pass (see :mod:`embedserve.engines.warmup`), then one batch of the largest shape the
        packer can form (``max_batch_tokens`` of maximum-length inputs). The runtimes keep the memory of the largest
        shape they have run (OpenVINO's scratch buffers, ONNX Runtime's arena), so the server reaches that high-water
        mark before it reports ready instead of stepping up under load later (for a long-context model that one
        batch is long inputs: it takes seconds and the memory such inputs would take anyway)."""
        cost = forward_cost(
            self, pad_id=self.pad_id, max_len=self.max_len, max_batch_tokens=max_batch_tokens, full_batch=False
        )
        largest = uniform_batch(self.pad_id, min(self.max_len, max_batch_tokens), max_batch_tokens)
        self.finish(self.launch(self.prepare(largest)))
        return cost

    def express(self) -> ArrayRunner | None:
        """The engine's second runner, with a lone input of every length up to
        :data:`~embedserve.engines.base.EXACT_SINGLE_LENGTH` run once (a short query's shapes, compiled at start)."""
        if self.express_factory is None:
            return None
        runner = self.express_factory()
        for length in range(1, EXACT_SINGLE_LENGTH + 1):
            runner.finish(runner.launch(runner.prepare([[runner.pad_id] * length])))
        return runner


def pool(hidden: np.ndarray, pooling: str, mask: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Token states (inputs x tokens x hidden) -> one float32 vector per input."""
    if pooling == "cls":
        return np.ascontiguousarray(hidden[:, 0])
    if pooling == "mean":
        summed: np.ndarray = np.einsum("bt,bth->bh", mask.astype(hidden.dtype), hidden)
        mean: np.ndarray = summed / lengths[:, None].astype(hidden.dtype)
        return mean
    # last-token: batches are right-padded, so each input's last real token sits at length - 1.
    return np.ascontiguousarray(hidden[np.arange(hidden.shape[0]), lengths - 1])


def sparse_rows(weights: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per input, its non-zero vocabulary terms: (indices ascending as int32, their weights)."""
    rows = []
    for row in weights:
        indices = np.flatnonzero(row).astype(np.int32)
        rows.append((indices, row[indices]))
    return rows


def runner_settings(desc: ModelDescription) -> dict[str, Any]:
    """The :class:`ArrayRunner` arguments that follow from the model: output, pooling, padding, limits."""
    return {
        "output": {"embedding": "hidden", "sparse": "sparse"}.get(desc.kind, "logits"),
        "pooling": desc.pooling,
        "pad_id": desc.pad_id,
        "max_len": desc.max_input_length,
        "vocab": int(desc.config.vocab_size),
    }


def architecture(desc: ModelDescription) -> str:
    """The architecture a graph was made from, as transformers names it (``BertModel``...)."""
    return str((getattr(desc.config, "architectures", None) or [desc.config.model_type])[0])
