"""The tokenizer pool: small requests alone in flight are tokenized on the calling thread, with the same result as
on a worker; the limits hold either way."""

from __future__ import annotations

import asyncio
import threading

import pytest

from embedserve.core.tokenization import INLINE_CHARACTERS, TokenizerPool
from embedserve.errors import ValidationError

pytestmark = pytest.mark.unit


@pytest.fixture
def pool(minilm_path):
    tokenizers = TokenizerPool((minilm_path / "tokenizer.json").read_text(), workers=1, max_input_length=16)
    yield tokenizers
    tokenizers.close()


class Recording(TokenizerPool):
    """Notes which thread each encode ran on."""

    threads: list[str]

    def encode_sync(self, *args):  # type: ignore[no-untyped-def]
        self.threads.append(threading.current_thread().name)
        return super().encode_sync(*args)


@pytest.mark.parametrize("inline", [True, False])
def test_inline_and_pooled_tokenization_agree_and_both_truncate(pool, inline):
    short = ["a man is eating food", "the end"]
    long = ["word " * 40]
    got = asyncio.run(pool.encode(short + long, truncate=True, direction="right", inline=inline))
    assert got.ids == asyncio.run(pool.encode(short + long, truncate=True, direction="right")).ids
    assert len(got.ids[2]) == 16
    with pytest.raises(ValidationError, match="at most 16"):
        asyncio.run(pool.encode(long, truncate=False, direction="right", inline=inline))


def test_only_small_requests_run_inline(minilm_path):
    pool = Recording((minilm_path / "tokenizer.json").read_text(), workers=1, max_input_length=256)
    pool.threads = []
    try:
        asyncio.run(pool.encode(["x" * INLINE_CHARACTERS], truncate=True, direction="right", inline=True))
        asyncio.run(pool.encode(["x" * (INLINE_CHARACTERS + 1)], truncate=True, direction="right", inline=True))
        asyncio.run(pool.encode(["short"], truncate=True, direction="right", inline=False))
    finally:
        pool.close()
    main = threading.current_thread().name
    assert pool.threads[0] == main
    assert pool.threads[1] != main
    assert pool.threads[2] != main
