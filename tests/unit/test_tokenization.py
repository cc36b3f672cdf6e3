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


@pytest.mark.parametrize(("overlap", "repeated"), [(0, 0), (3, 3), (100, 7)], ids=["none", "three", "capped"])
def test_chunks_cover_the_text_in_order_repeating_the_overlap_at_most_half_a_chunk(pool, overlap, repeated):
    text = " ".join(f"w{i}" for i in range(30))  # more than two chunks of the 14 tokens a 16-token chunk holds
    content = [token.id for token in asyncio.run(pool.tokens([text], add_special_tokens=False))[0]]
    plain = asyncio.run(pool.encode(["short"], truncate=False, direction="right")).ids[0]
    chunks = asyncio.run(pool.encode_chunks([text, "short"], overlap=overlap))
    assert chunks[1] == [plain]  # within the limit: one chunk, as the plain pipeline tokenizes it
    assert len(chunks[0]) > 2
    assert all(len(chunk) <= 16 for chunk in chunks[0])
    assert all(chunk[0] == plain[0] and chunk[-1] == plain[-1] for chunk in chunks[0])  # [CLS] ... [SEP] each
    pieces = [chunk[1:-1] for chunk in chunks[0]]
    for before, after in zip(pieces, pieces[1:], strict=False):
        assert after[:repeated] == (before[-repeated:] if repeated else [])
    assert [token for i, piece in enumerate(pieces) for token in piece[(repeated if i else 0) :]] == content


def test_a_prompt_starts_every_chunk_and_one_over_half_a_chunk_is_refused(pool):
    text = " ".join(f"w{i}" for i in range(30))
    prompt = asyncio.run(pool.tokens(["query: "], add_special_tokens=False))[0]
    chunks = asyncio.run(pool.encode_chunks([text], overlap=2, prefix="query: "))[0]
    assert len(chunks) > 2
    assert all(chunk[1 : 1 + len(prompt)] == [token.id for token in prompt] for chunk in chunks)
    long_prompt = "a b c d e f g h "
    assert len(asyncio.run(pool.encode_chunks(["short"], overlap=2, prefix=long_prompt))[0]) == 1  # fits: no chunks
    with pytest.raises(ValidationError, match="more than half of a chunk") as refused:
        asyncio.run(pool.encode_chunks([text], overlap=2, prefix=long_prompt))
    assert refused.value.param == "prompt_name"
