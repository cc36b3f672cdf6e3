"""Tokenization on a pool of worker threads, off the event loop.

Each worker thread owns its own :class:`tokenizers.Tokenizer` (built from the same JSON), so no two threads ever
share one: the Rust tokenizer releases the GIL while it works, and per-thread copies avoid its "already borrowed"
errors. Inputs are encoded without special tokens, truncated (or rejected) against the model's maximum, and only then
given their special tokens, so truncation never cuts ``[CLS]``/``[SEP]`` or an EOS token.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from tokenizers import Tokenizer

from embedserve.errors import ValidationError
from embedserve.schemas import Direction


def load_tokenizer(tokenizer_json: str) -> Tokenizer:
    """A tokenizer with the truncation and padding that model repos often bake into tokenizer.json switched off:
    embedserve truncates per request and pads per batch itself."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class TokenizerPool:
    """Encodes lists of texts into token ids on ``workers`` threads."""

    def __init__(self, tokenizer_json: str, *, workers: int, max_input_length: int) -> None:
        self._json = tokenizer_json
        self._local = threading.local()
        self.max_input_length = max_input_length
        probe = load_tokenizer(tokenizer_json)
        self._special_tokens = probe.num_special_tokens_to_add(False)
        if max_input_length <= self._special_tokens:
            raise ValueError(f"maximum input length {max_input_length} leaves no room for text")
        self._workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embedserve-tokenize")

    def warm(self) -> None:
        """Start every worker thread and build its tokenizer now, so that no request pays for it."""
        barrier = threading.Barrier(self._workers)

        def build(_: int) -> None:
            self._tokenizer()
            barrier.wait(timeout=60)  # holds each thread until all have one task: every worker gets built

        list(self._executor.map(build, range(self._workers)))

    async def encode(
        self, texts: list[str], *, truncate: bool, direction: Direction, param: str = "inputs"
    ) -> list[list[int]]:
        """Token ids (with special tokens) for each text, in order.

        Raises :class:`ValidationError` naming the input and the limit when an input is too long and ``truncate`` is
        false.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.encode_sync, texts, truncate, direction, param)

    def encode_sync(self, texts: list[str], truncate: bool, direction: Direction, param: str) -> list[list[int]]:
        """The blocking body of :meth:`encode`; runs on a worker thread."""
        tokenizer = self._tokenizer()
        if len(texts) == 1:
            encodings = [tokenizer.encode(texts[0], add_special_tokens=False)]
        else:
            encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        room = self.max_input_length - self._special_tokens
        result: list[list[int]] = []
        for i, encoding in enumerate(encodings):
            if len(encoding) > room:
                if not truncate:
                    raise ValidationError(
                        f"`{param}[{i}]` is {len(encoding) + self._special_tokens} tokens long; the model takes at "
                        f"most {self.max_input_length}. Shorten it or send `truncate: true`",
                        param=param,
                    )
                encoding.truncate(room, direction=direction)
            ids = tokenizer.post_process(encoding).ids
            if not ids:
                raise ValidationError(f"`{param}[{i}]` has no tokens after tokenization", param=param)
            result.append(ids)
        return result

    def _tokenizer(self) -> Tokenizer:
        tokenizer: Tokenizer | None = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = load_tokenizer(self._json)
            self._local.tokenizer = tokenizer
        return tokenizer

    def close(self) -> None:
        """Stop the workers once queued work is done."""
        self._executor.shutdown(wait=False, cancel_futures=True)
