"""What every model runner shares: padding a batch into tensors on the device, the launch/finish split that lets
the next batch be prepared while the GPU computes, and the warm-up that measures a forward pass's fixed cost."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any, ClassVar

import numpy as np
import torch

from embedserve.engines.warmup import ForwardCost, forward_cost
from embedserve.errors import ModelLoadError

Prepared = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]
"""ids, attention mask, lengths, token type ids (pairs only)."""

Encode = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""The model called with input ids and an attention mask, returning one field of its output."""


class Runner:
    """A loaded transformers model, run as prepare -> launch -> finish on its backend thread.

    Subclasses implement :meth:`forward` (device tensors in, one device tensor out, first dimension the batch) and
    may override :meth:`to_results` (host array -> one result per input). A subclass that calls the model with ids
    and mask only names the output field it uses in :attr:`output` and calls :attr:`encode`, which a CPU load may
    replace with a TorchScript trace of the same call (:mod:`embedserve.engines.torch.trace`).
    """

    output: ClassVar[str | None] = None
    """The field of the model's output that :attr:`encode` returns; None where the runner calls the model itself."""

    def __init__(self, model: Any, *, device: torch.device, pad_id: int, max_len: int) -> None:
        self.model = model
        self.device = device
        self.cuda = device.type == "cuda"
        self.pad_id = pad_id
        self.max_len = max_len
        # A decoder would build a key/value cache that an embedding never uses (and a trace cannot return).
        takes_cache = "use_cache" in inspect.signature(model.forward).parameters
        self._options: dict[str, Any] = {"use_cache": False} if takes_cache else {}
        self.encode: Encode = self.eager_encode
        """The model on (ids, mask), returning :attr:`output`: eager, or a verified trace of this on a CPU."""

    @property
    def graph(self) -> str:
        """How :attr:`encode` runs: ``eager``, or ``torchscript`` once a trace replaced it."""
        return "eager" if self.encode == self.eager_encode else "torchscript"

    def eager_encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The model's own Python forward on (ids, mask), returning the :attr:`output` field."""
        out: torch.Tensor = getattr(self.model(input_ids=ids, attention_mask=mask, **self._options), str(self.output))
        return out

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, types: torch.Tensor | None) -> Any:
        """The model's output for a prepared batch, as a float32 tensor on the device."""
        raise NotImplementedError

    def to_results(self, host: np.ndarray) -> Iterable[Any]:
        """One result per input from the host copy of :meth:`forward`'s output."""
        return host

    def prepare(self, token_ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None) -> Prepared:
        """Right-pad into tensors on the device (pinned memory and an asynchronous copy on CUDA)."""
        lengths = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))
        longest = int(lengths.max())
        mask = np.arange(longest) < lengths[:, None]
        ids = np.full((len(token_ids), longest), self.pad_id, dtype=np.int64)
        ids[mask] = np.fromiter(chain.from_iterable(token_ids), dtype=np.int64, count=int(lengths.sum()))
        types = None
        if type_ids is not None:
            types = np.zeros((len(token_ids), longest), dtype=np.int64)
            types[mask] = np.fromiter(chain.from_iterable(type_ids), dtype=np.int64, count=int(lengths.sum()))
        arrays = (ids, mask.astype(np.int64), lengths)
        tensors = [torch.from_numpy(a) for a in arrays]
        typed = None if types is None else torch.from_numpy(types)
        if self.cuda:
            tensors = [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]
            typed = None if typed is None else typed.pin_memory().to(self.device, non_blocking=True)
        return tensors[0], tensors[1], tensors[2], typed

    def compute(self, prepared: Any) -> torch.Tensor:
        """The forward pass of a prepared batch (a runner taking other inputs than text dispatches here)."""
        out: torch.Tensor = self.forward(*prepared)
        return out

    def launch(self, prepared: Any) -> tuple[torch.Tensor, Any]:
        """Forward pass. On CUDA this returns once the work is queued, with a copy to pinned host memory."""
        with torch.inference_mode():
            out = self.compute(prepared)
            if not self.cuda:
                return out, None
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record()
            return host, done

    def finish(self, launched: tuple[torch.Tensor, Any]) -> Iterable[Any]:
        """Wait for the device; one result per input, in batch order."""
        host, done = launched
        if done is not None:
            done.synchronize()
        return self.to_results(host.numpy())

    def express(self) -> None:
        """No express lane on torch: on a CPU a second thread running torch ops keeps an OpenMP pool of its own (see
        :class:`~embedserve.core.backend.BackendThread`), and on a GPU both would queue on the one device."""

    def warmup(self, max_batch_tokens: int) -> ForwardCost:
        """The cost of a forward pass (see :mod:`embedserve.engines.warmup`); on CUDA measured with a
        full ``max_batch_tokens`` batch of the longest inputs, so that an out-of-memory shows at start-up, as a
        :class:`ModelLoadError` that names the flag to lower, instead of failing requests under load."""
        try:
            return forward_cost(
                self, pad_id=self.pad_id, max_len=self.max_len, max_batch_tokens=max_batch_tokens, full_batch=self.cuda
            )
        except torch.cuda.OutOfMemoryError as exc:
            total = torch.cuda.get_device_properties(self.device).total_memory
            raise ModelLoadError(
                f"a full batch of --max-batch-tokens {max_batch_tokens} ran out of GPU memory on {self.device} "
                f"({total / 2**30:.1f} GiB): lower --max-batch-tokens"
            ) from exc
