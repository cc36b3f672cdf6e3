"""Cross-encoders and classifiers: ``AutoModelForSequenceClassification`` logits per input (or text pair)."""

from __future__ import annotations

import torch

from embedserve.engines.torch.runner import Runner


class CrossRunner(Runner):
    """Raw logits, (inputs, labels) float32; the activation (sigmoid, softmax) is applied per request."""

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, types: torch.Tensor | None
    ) -> torch.Tensor:
        """Classifier logits for each input or pair."""
        inputs = {"input_ids": ids, "attention_mask": mask}
        if types is not None and self.accepts_token_types:
            inputs["token_type_ids"] = types
        logits: torch.Tensor = self.model(**inputs).logits
        return logits.float()

    @property
    def accepts_token_types(self) -> bool:
        """Whether the architecture takes token type ids (BERT does, RoBERTa ignores them, some reject them)."""
        return (getattr(self.model.config, "type_vocab_size", 0) or 0) > 1
