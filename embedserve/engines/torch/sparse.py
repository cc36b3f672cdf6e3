"""SPLADE sparse vectors: masked-LM logits -> log(1 + relu(logits)) -> max over the input's tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from embedserve.engines.arrays import SPARSE_LOGITS_BUDGET, sparse_rows
from embedserve.engines.torch.runner import Runner


class SpladeRunner(Runner):
    """One (indices, values) pair of arrays per input: the vocabulary terms with a non-zero weight."""

    output = "logits"

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, types: torch.Tensor | None
    ) -> torch.Tensor:
        """(inputs, vocabulary) float32 term weights."""
        vocab = self.model.config.vocab_size
        step = max(1, SPARSE_LOGITS_BUDGET // (ids.shape[1] * vocab))
        pooled = []
        for start in range(0, ids.shape[0], step):
            part = slice(start, start + step)
            logits = self.encode(ids[part], mask[part])
            weights = torch.log1p(torch.relu(logits.float())) * mask[part].unsqueeze(-1)
            pooled.append(weights.amax(dim=1))
        return torch.cat(pooled)

    def to_results(self, host: np.ndarray) -> Sequence[Any]:
        """Keep the non-zero terms of each row, in index order."""
        return sparse_rows(host)
