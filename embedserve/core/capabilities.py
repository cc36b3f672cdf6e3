"""What a served model can do, in the core's words: the HTTP layer maps its routes onto these."""

from __future__ import annotations

import enum


class Capability(enum.StrEnum):
    """One kind of work a model can serve."""

    EMBED = "embed"
    """Dense vectors."""
    EMBED_IMAGE = "embed images"
    """Dense vectors of images, in the same space as the model's text vectors (CLIP-style dual encoders)."""
    SPARSE = "sparse"
    """SPLADE vectors over the vocabulary."""
    RERANK = "rerank"
    """Relevance scores of (query, document) pairs."""
    CLASSIFY = "classify"
    """Label scores of single texts or text pairs."""
    TOKENIZE = "tokenize"
    """Tokenizing and decoding: the tokenizer alone, so every model can."""


KIND_CAPABILITIES: dict[str, tuple[Capability, ...]] = {
    "embedding": (Capability.EMBED, Capability.TOKENIZE),
    "sparse": (Capability.SPARSE, Capability.TOKENIZE),
    # A reranker is a one-label classifier, so it scores single texts and pairs as classify asks too.
    "rerank": (Capability.RERANK, Capability.CLASSIFY, Capability.TOKENIZE),
    "classify": (Capability.CLASSIFY, Capability.TOKENIZE),
    # A dual encoder embeds texts (its text tower) and images (its vision tower) into one space.
    "multimodal": (Capability.EMBED, Capability.EMBED_IMAGE, Capability.TOKENIZE),
}
"""What each kind of model can do, in the order error messages list it."""
