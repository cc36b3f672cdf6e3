"""Dense embeddings: a transformers encoder or decoder plus CLS, mean or last-token pooling."""

from __future__ import annotations

from typing import Any

import torch

from embedserve.engines.torch.runner import Runner


class DenseRunner(Runner):
    """``AutoModel`` hidden states pooled into one float32 vector per input."""

    output = "last_hidden_state"

    def __init__(self, model: Any, *, pooling: str, **common: Any) -> None:
        super().__init__(model, **common)
        self.pooling = pooling

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, types: torch.Tensor | None
    ) -> torch.Tensor:
        """Pooled hidden states, (inputs, hidden) float32."""
        hidden = self.encode(ids, mask)
        if self.pooling == "cls":
            return hidden[:, 0].float()
        if self.pooling == "mean":
            # Weights of 1/length per real token: a mean without a large intermediate sum, safe in float16.
            weights = mask.to(hidden.dtype) / lengths.to(hidden.dtype).unsqueeze(1)
            return torch.bmm(weights.unsqueeze(1), hidden).squeeze(1).float()
        # last-token: batches are right-padded, so each input's last real token sits at length - 1.
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1].float()
