"""Loading transformers models and running their forward passes: the only module that imports torch.

:func:`load` turns :class:`~embedserve.settings.ModelSettings` into a :class:`~embedserve.backend.ModelInfo` and an
object implementing :class:`~embedserve.backend.InferenceModel`. Every method of that object runs on the model's
backend thread.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from embedserve.backend import ModelInfo
from embedserve.modelfiles import ModelLoadError, read_sentence_transformers_config, resolve_model_dir
from embedserve.settings import ModelSettings

log = logging.getLogger("embedserve.model")

# oneDNN keeps a compiled kernel, with its buffers, for every distinct tensor shape it sees (1024 by default), and
# dynamic batching produces hundreds of shapes: under overload RSS grew from 486 to 1467 MiB in two minutes. A small
# cache keeps it flat (about 650 MiB) at no measured speed cost; no cache at all costs 0.5-1 ms a forward pass.
# oneDNN reads this when it builds its first kernel, so setting it before any forward pass is enough; an operator's
# own value wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text"}
"""Architectures whose position ids start after the padding index, so two positions are unusable."""


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {requested} asked for CUDA but torch sees no GPU; use --device cpu or auto")
    return device


def resolve_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """The default is float16 on CUDA and float32 on CPU."""
    if requested is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if requested != "float32" and device.type == "cpu":
        log.warning("--dtype %s on CPU is usually slower than float32", requested)
    return _DTYPES[requested]


def load(spec: ModelSettings) -> tuple[ModelInfo, TransformerEmbedder]:
    """Fetch (if needed) and load a model for dense embeddings."""
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    path = resolve_model_dir(spec)
    st = read_sentence_transformers_config(path)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the config or tokenizer in {path}: {exc}") from exc
    backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)
    if backend_tokenizer is None:
        raise ModelLoadError(f"{path} has no fast (Rust) tokenizer; embedserve needs tokenizer.json")
    pooling = spec.pooling or st.pooling or _default_pooling(config.model_type)
    try:
        model = AutoModel.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    except (ValueError, ImportError) as exc:
        if not any(word in str(exc).lower() for word in ("sdpa", "scaled_dot_product_attention")):
            raise ModelLoadError(f"cannot load the weights in {path}: {exc}") from exc
        log.warning("%s does not support SDPA attention; using the eager implementation", config.model_type)
        model = AutoModel.from_pretrained(path, dtype=dtype)
    model.to(device).eval()
    info = ModelInfo(
        model_id=spec.model_id,
        revision=spec.revision,
        path=str(path),
        architecture=type(model).__name__,
        kind="embedding",
        pooling=pooling,
        dim=int(config.hidden_size),
        max_input_length=_max_input_length(config, tokenizer.model_max_length, st.max_seq_length),
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        tokenizer_json=backend_tokenizer.to_str(),
        prompts=st.prompts,
        default_prompt_name=st.default_prompt_name,
        lowercase=st.do_lower_case,
    )
    pad_id = _pad_id(config.pad_token_id, tokenizer.pad_token_id)
    return info, TransformerEmbedder(
        model, device=device, pooling=pooling, pad_id=pad_id, max_len=info.max_input_length
    )


def _default_pooling(model_type: str) -> str:
    # Encoders (they have a masked-LM head in transformers) pool on CLS, as TEI does; decoders on the last token.
    return "cls" if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "last-token"


def _max_input_length(config: Any, tokenizer_max: int, st_max: int | None) -> int:
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        offset = 2 if config.model_type in _POSITION_OFFSET_TYPES else 0
        limits.append(positions - offset)
    if st_max is not None:
        limits.append(st_max)
    elif 0 < tokenizer_max < 1_000_000:  # tokenizers without a limit report a huge sentinel value
        limits.append(tokenizer_max)
    if not limits:
        raise ModelLoadError("cannot tell the model's maximum input length from its config or tokenizer")
    return min(limits)


def _pad_id(config_pad: int | None, tokenizer_pad: int | None) -> int:
    # The model's own padding index matters (RoBERTa derives position ids from it); otherwise anything masked works.
    if config_pad is not None:
        return int(config_pad)
    return int(tokenizer_pad) if tokenizer_pad is not None else 0


class TransformerEmbedder:
    """A transformers encoder or decoder plus pooling, run as prepare -> launch -> finish on the backend thread."""

    def __init__(self, model: Any, *, device: torch.device, pooling: str, pad_id: int, max_len: int) -> None:
        self._model = model
        self._device = device
        self._cuda = device.type == "cuda"
        self._pooling = pooling
        self._pad_id = pad_id
        self._max_len = max_len

    def prepare(self, token_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-pad into (ids, attention mask, lengths) tensors on the device."""
        lengths = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))
        longest = int(lengths.max())
        mask = np.arange(longest) < lengths[:, None]
        ids = np.full((len(token_ids), longest), self._pad_id, dtype=np.int64)
        ids[mask] = np.fromiter(chain.from_iterable(token_ids), dtype=np.int64, count=int(lengths.sum()))
        tensors = (torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(lengths))
        if not self._cuda:
            return tensors
        ids_t, mask_t, lengths_t = (t.pin_memory().to(self._device, non_blocking=True) for t in tensors)
        return ids_t, mask_t, lengths_t

    def launch(self, prepared: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """Forward pass and pooling. On CUDA this returns once the work is queued, with a copy to pinned memory."""
        ids, mask, lengths = prepared
        with torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = self._pool(hidden, mask, lengths).float()
            if not self._cuda:
                return pooled, None
            host = torch.empty(pooled.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(pooled, non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record()
            return host, done

    def finish(self, launched: tuple[torch.Tensor, Any]) -> np.ndarray:
        """Wait for the device; one float32 row per input."""
        host, done = launched
        if done is not None:
            done.synchronize()
        return host.numpy()

    def warmup(self, max_batch_tokens: int) -> float:
        """Time a one-input batch and a large one, fitting ``time = fixed + per_token * padded_tokens``; returns
        ``fixed / per_token``. On CUDA the large batch is a full ``max_batch_tokens`` one, so an out-of-memory shows
        at start-up; on CPU it is 1024 tokens, enough to measure the per-token cost in well under a second."""
        short = 16
        small = self._typical_time([[self._pad_id] * short])
        large_tokens = max_batch_tokens if self._cuda else min(1024, max_batch_tokens)
        length = min(128, self._max_len, large_tokens)
        batch = [[self._pad_id] * length] * max(1, large_tokens // length)
        large = self._typical_time(batch)
        per_token = (large - small) / max(1, length * len(batch) - short)
        if per_token <= 0:  # too little compute to tell apart: batching costs nothing, so always fill batches
            return float(max_batch_tokens)
        return min(float(max_batch_tokens), max(0.0, small - short * per_token) / per_token)

    def _typical_time(self, batch: list[list[int]]) -> float:
        for _ in range(2):  # the first calls of a shape pay for lazy kernel set-up
            self.finish(self.launch(self.prepare(batch)))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            self.finish(self.launch(self.prepare(batch)))
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self._pooling == "cls":
            return hidden[:, 0]
        if self._pooling == "mean":
            # Weights of 1/length per real token: a mean without a large intermediate sum, safe in float16.
            weights = mask.to(hidden.dtype) / lengths.to(hidden.dtype).unsqueeze(1)
            return torch.bmm(weights.unsqueeze(1), hidden).squeeze(1)
        # last-token: batches are right-padded, so each input's last real token sits at length - 1.
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
