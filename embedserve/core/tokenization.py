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
from dataclasses import dataclass
from typing import Any, Literal

from tokenizers import Encoding, Tokenizer

from embedserve.errors import ValidationError

INLINE_CHARACTERS = 512
"""A request the runtime lets tokenize inline (the only one in flight for its model) with at most this many
characters in all is tokenized on the event loop: about 0.3 us a character, so at most about 0.15 ms, less than the
two thread hops to a worker and back (the tokenize stage of a short text at concurrency 1 fell from 0.3 to 0.06 ms).
Under concurrency the pool stays faster: it tokenizes while the loop serves other requests."""

Direction = Literal["right", "left"]
"""Which end of an over-long input truncation cuts."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """A request's inputs as the model takes them: token ids (with special tokens) per input, in input order, and
    for text pairs the token type ids that tell the two texts apart."""

    ids: list[list[int]]
    type_ids: list[list[int]] | None = None
    pixels: list[Any] | None = None
    """For requests with images, per input: the engine's preprocessed image, or None for a text (whose ids are set;
    an image's ids are empty)."""

    @property
    def tokens(self) -> int:
        """Real (unpadded) text tokens over every input."""
        return sum(map(len, self.ids))


@dataclass(frozen=True, slots=True)
class Token:
    """One token as /tokenize reports it."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


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
        self.vocab_size = probe.get_vocab_size()
        self._vocab = [probe.id_to_token(i) or "" for i in range(self.vocab_size)]
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

    def warm_inline(self) -> None:
        """Build the calling (event loop) thread's tokenizer, for the small requests it tokenizes itself."""
        self._tokenizer()

    async def encode(
        self, texts: list[str], *, truncate: bool, direction: Direction, param: str = "inputs", inline: bool = False
    ) -> Encoded:
        """Token ids (with special tokens) for each text, in order.

        Raises :class:`ValidationError` naming the input and the limit when an input is too long and ``truncate`` is
        false. With ``inline``, a request of at most :data:`INLINE_CHARACTERS` characters is tokenized on the calling
        (event loop) thread.
        """
        if inline and sum(map(len, texts)) <= INLINE_CHARACTERS:
            return self.encode_sync(texts, truncate, direction, param)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.encode_sync, texts, truncate, direction, param)

    def encode_sync(self, texts: list[str], truncate: bool, direction: Direction, param: str) -> Encoded:
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
        return Encoded(result)

    async def encode_chunks(
        self, texts: list[str], *, overlap: int, prefix: str = "", param: str = "inputs"
    ) -> list[list[list[int]]]:
        """Each ``prefix + text`` as one or more chunks of token ids, each with the special tokens. One within the
        model's limit is one chunk, tokenized as :meth:`encode` does. A longer one is cut on token boundaries into
        chunks of the limit, each starting ``overlap`` tokens (at most half a chunk) before the previous one ends
        (the last may be shorter), and ``prefix`` (a prompt) starts every chunk, not only the first."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.encode_chunks_sync, texts, overlap, prefix, param)

    def encode_chunks_sync(self, texts: list[str], overlap: int, prefix: str, param: str) -> list[list[list[int]]]:
        """The blocking body of :meth:`encode_chunks`; runs on a worker thread."""
        tokenizer = self._tokenizer()
        room = self.max_input_length - self._special_tokens
        head = tokenizer.encode(prefix, add_special_tokens=False) if prefix else None
        body_room = room - (len(head) if head is not None else 0)
        result: list[list[list[int]]] = []
        for i, text in enumerate(texts):
            whole = tokenizer.encode(prefix + text, add_special_tokens=False)
            if len(whole) <= room:
                ids = tokenizer.post_process(whole).ids
                if not ids:
                    raise ValidationError(f"`{param}[{i}]` has no tokens after tokenization", param=param)
                result.append([ids])
                continue
            if head is not None and len(head) > room // 2:
                raise ValidationError(
                    f"the prompt is {len(head)} tokens long, more than half of a chunk ({room // 2}); `{param}[{i}]` "
                    "is too long to chunk with it",
                    param="prompt_name",
                )
            body = tokenizer.encode(text, add_special_tokens=False)
            # The rest goes to body.overflowing, window after window, each repeating the last `stride` tokens of the
            # one before; each window gets the prompt's tokens in front and, from post_process, the special tokens.
            body.truncate(body_room, stride=min(overlap, body_room // 2), direction="right")
            windows = [body, *body.overflowing]
            if head is not None:
                windows = [Encoding.merge([head, window], growing_offsets=True) for window in windows]
            result.append([tokenizer.post_process(window).ids for window in windows])
        return result

    async def encode_pairs(
        self, pairs: list[tuple[str, str | None]], *, truncate: bool, direction: Direction, param: str,
        inline: bool = False,
    ) -> Encoded:  # fmt: skip
        """Token ids and token type ids for each (first, second) text pair, or single text when second is None
        (``inline`` as in :meth:`encode`)."""
        if inline and sum(len(first) + len(second or "") for first, second in pairs) <= INLINE_CHARACTERS:
            return self.encode_pairs_sync(pairs, truncate, direction, param)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.encode_pairs_sync, pairs, truncate, direction, param)

    def encode_pairs_sync(
        self, pairs: list[tuple[str, str | None]], truncate: bool, direction: Direction, param: str
    ) -> Encoded:
        """The blocking body of :meth:`encode_pairs`. Over-long pairs lose tokens from the second text (the
        document), and from the first only if it alone leaves no room."""
        tokenizer = self._tokenizer()
        ids: list[list[int]] = []
        type_ids: list[list[int]] = []
        for i, (first, second) in enumerate(pairs):
            query = tokenizer.encode(first, add_special_tokens=False)
            document = None if second is None else tokenizer.encode(second, add_special_tokens=False)
            room = self.max_input_length - tokenizer.num_special_tokens_to_add(document is not None)
            length = len(query) + (len(document) if document is not None else 0)
            if length > room:
                if not truncate:
                    raise ValidationError(
                        f"`{param}[{i}]` is {length + self.max_input_length - room} tokens long; the model takes at "
                        f"most {self.max_input_length}. Shorten it or send `truncate: true`",
                        param=param,
                    )
                if document is None or len(query) >= room:
                    query.truncate(room if document is None else room // 2, direction=direction)
                if document is not None:
                    document.truncate(room - len(query), direction=direction)
            encoding = tokenizer.post_process(query, document)
            ids.append(encoding.ids)
            type_ids.append(encoding.type_ids)
        return Encoded(ids, type_ids)

    async def tokens(self, texts: list[str], *, add_special_tokens: bool) -> list[list[Token]]:
        """Every token of each text, with its character span in the text (None for special tokens)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._tokens_sync, texts, add_special_tokens)

    def _tokens_sync(self, texts: list[str], add_special_tokens: bool) -> list[list[Token]]:
        tokenizer = self._tokenizer()
        encodings = tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        result = []
        for text, encoding in zip(texts, encodings, strict=True):
            tokens = []
            for token_id, token, (start, stop), special in zip(
                encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask, strict=True
            ):
                if special:
                    tokens.append(Token(token_id, token, True, None, None))
                else:
                    tokens.append(Token(token_id, text[start:stop], False, start, stop))
            result.append(tokens)
        return result

    async def decode(self, ids: list[list[int]], *, skip_special_tokens: bool, param: str = "ids") -> list[str]:
        """Text for each list of token ids; ids outside the vocabulary are a validation error."""
        for i, row in enumerate(ids):
            bad = next((token for token in row if not 0 <= token < self.vocab_size), None)
            if bad is not None:
                raise ValidationError(f"`{param}[{i}]` holds {bad}, not a token id of this model", param=param)
        loop = asyncio.get_running_loop()
        tokenizer = self._tokenizer  # resolved on the worker thread, which owns its tokenizer
        return await loop.run_in_executor(
            self._executor, lambda: tokenizer().decode_batch(ids, skip_special_tokens=skip_special_tokens)
        )

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry of a token id (for sparse results with ``return_tokens``)."""
        return self._vocab[token_id] if 0 <= token_id < len(self._vocab) else ""

    def _tokenizer(self) -> Tokenizer:
        tokenizer: Tokenizer | None = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = load_tokenizer(self._json)
            self._local.tokenizer = tokenizer
        return tokenizer

    def close(self) -> None:
        """Stop the workers once queued work is done."""
        self._executor.shutdown(wait=False, cancel_futures=True)
