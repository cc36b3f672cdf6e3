"""Deterministic benchmark inputs: English-like texts of three length mixes, and their token counts.

The texts are random sentences over a few hundred common English words, so a WordPiece or BPE tokenizer splits them
the way it splits real prose (about 1.2-1.4 tokens a word), which a repeated single word would not.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Function words are drawn more often than content words, as in real prose; both lists are plain common English.
_FUNCTION_WORDS = _words(
    """
the of and to a in is that for it as was with be by on not he this are or his from at which but have an they
you were her she there would their we him been has when who will more no if out so said what up its about into
than them can only other new some could time these two may then do first any my now such like our over man me
even most made after also did many before must through back years where much your way well down should because
each just those people how too little state good very make world still own see men work long get here between
both life being under never day same another know while last might us great old year off come since against go
"""
)

_CONTENT_WORDS = _words(
    """
system data model server request response network memory process thread engine vector search index query result
language sentence document paragraph meaning context question answer number value signal pattern structure layer
weight training learning machine computer program function method library package version release update change
river mountain forest ocean island valley desert garden village city street bridge harbor market station museum
library school hospital kitchen window door table chair carpet blanket pillow mirror candle lantern basket bottle
morning evening afternoon winter summer autumn spring season weather storm thunder rainbow sunlight shadow cloud
doctor teacher student farmer engineer artist writer singer driver pilot sailor soldier merchant baker painter
history science physics chemistry biology economy politics culture religion music theatre poetry novel journal
travel journey voyage adventure mystery discovery invention experiment evidence theory practice method approach
quickly slowly carefully quietly suddenly rarely usually often always sometimes perhaps probably certainly nearly
bright dark heavy light warm cold quiet noisy ancient modern simple complex careful strange familiar curious gentle
important different possible available common popular recent similar useful difficult expensive reliable efficient
build create design develop measure improve reduce increase compare describe explain discover imagine consider
carry follow gather handle listen notice remember return share support travel wonder explore collect deliver
apple bread butter cheese coffee dinner flour honey lemon onion orange pepper potato rice salad sugar tomato water
horse rabbit eagle falcon salmon turtle dolphin elephant giraffe monkey tiger wolf sparrow beetle spider whale
yellow purple silver golden crimson emerald violet scarlet orange copper bronze marble granite crystal velvet
agreement argument attention behaviour character condition decision direction education environment equipment
government judgement knowledge management movement opportunity performance population production relationship
temperature understanding university variation vocabulary wilderness yesterday tomorrow fortnight neighbourhood
electricity photography architecture philosophy mathematics archaeology astronomy geography meteorology
transformer embedding tokenizer throughput latency benchmark inference batching backpressure concurrency cluster
"""
)

_PUNCTUATION_AFTER = (",", ",", ";", ":")

LENGTH_MIXES: dict[str, tuple[int, int]] = {
    # mix name -> (min words, max words). "long" is long enough that every text exceeds 512 tokens, so it is cut to
    # the model's maximum input length (256 for all-MiniLM-L6-v2) whatever the tokenizer.
    "short": (5, 20),
    "mixed": (5, 120),
    "long": (480, 540),
}


def _sentence(rng: random.Random, n_words: int) -> str:
    words: list[str] = []
    for i in range(n_words):
        pool = _FUNCTION_WORDS if rng.random() < 0.42 else _CONTENT_WORDS
        word = rng.choice(pool)
        if i == 0:
            word = word.capitalize()
        elif i < n_words - 1 and rng.random() < 0.06:
            word += rng.choice(_PUNCTUATION_AFTER)
        words.append(word)
    return " ".join(words) + rng.choice((".", ".", ".", "?", "!"))


def make_text(rng: random.Random, n_words: int) -> str:
    """One text of exactly ``n_words`` words, made of sentences of 4-18 words."""
    sentences: list[str] = []
    left = n_words
    while left > 0:
        size = min(left, rng.randint(4, 18))
        sentences.append(_sentence(rng, size))
        left -= size
    return " ".join(sentences)


def make_texts(mix: str, count: int, seed: int) -> list[str]:
    """``count`` texts of the given length mix; the same (mix, count, seed) always gives the same texts."""
    low, high = LENGTH_MIXES[mix]
    # A per-mix seed keeps the mixes independent: changing one mix's count leaves the others' texts unchanged.
    rng = random.Random(f"{seed}:{mix}")
    return [make_text(rng, rng.randint(low, high)) for _ in range(count)]


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens the way the model sees them: special tokens included, truncated to the maximum length."""

    max_length: int
    tokenizer_path: Path

    def count(self, texts: Sequence[str]) -> tuple[list[int], list[int]]:
        """(truncated counts, untruncated counts), one of each per text."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        # One text at a time: encode_batch would start the Rust thread pool in this process, and the benchmark
        # later forks worker processes, where tokenizers would then warn and disable its parallelism.
        full = [len(tokenizer.encode(text).ids) for text in texts]
        return [min(n, self.max_length) for n in full], full

    def clip(self, texts: Sequence[str]) -> list[str]:
        """Each text cut where the model's truncation cuts it: the same tokens, from a shorter string.

        For servers that truncate at another limit (Infinity's optimum engine stops at the position limit, 512, not at
        the model's maximum length, 256): given clipped texts, they compute the same tokens as every other server.
        """
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        tokenizer.enable_truncation(self.max_length)
        tokenizer.no_padding()
        out = []
        for text in texts:
            encoding = tokenizer.encode(text)
            if not encoding.overflowing:
                out.append(text)
                continue
            pairs = zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
            kept = [end for (_, end), special in pairs if not special]
            out.append(text[: kept[-1]] if kept else "")
        return out


def model_max_length(model_dir: Path) -> int:
    """The model's maximum input length: sentence-transformers' max_seq_length, else the tokenizer's or config's."""
    candidates: list[tuple[str, str]] = [
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
        ("config.json", "max_position_embeddings"),
    ]
    for name, key in candidates:
        path = model_dir / name
        if not path.is_file():
            continue
        value = json.loads(path.read_text()).get(key)
        # tokenizer_config often carries a huge sentinel (1e30) meaning "no limit"; skip it.
        if isinstance(value, int) and 0 < value <= 1_000_000:
            return value
    return 512
