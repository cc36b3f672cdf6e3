"""How closely a faster numeric form (bfloat16, int8) reproduces a model's float32 vectors.

At start-up an engine that would serve a model in reduced precision runs a built-in set of varied texts through both
forms and compares the vectors (cosine, per text); the mean and minimum are logged and shown in ``/info``. With
``--dtype auto`` the reduced form is kept only when the mean cosine reaches :data:`AUTO_THRESHOLD`. The figures are
cached per model, engine, form, library version and CPU, since they are deterministic for those.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from embedserve.engines.base import Agreement
from embedserve.engines.warmup import Steps

AUTO_THRESHOLD = 0.9999
"""Mean cosine to float32 that ``--dtype auto`` requires before serving bfloat16."""
TEXT_COUNT = 256
_BATCH = 16

_WORDS = " ".join(
    (
        "the of and to in is was for on that with as by at from it an be this are or have which one had not but",
        "were they all their there been has when who will more no if out so said what up its about into than them",
        "can only other new some could time these two may then do first any my now such like our over man me even",
        "most made after also did many before must through back years where much your way well down should because",
        "each just those people how too little state good very make world still own see men work long get here",
        "between both life being under never day same another know while last might us great old year off come",
        "since against go came right used take three protein river budget engine market garden history language",
        "quantum mortgage vaccine kernel latency throughput embedding retrieval lawyer contract symptom diagnosis",
        "recipe butter volcano galaxy orbit telescope invoice refund shipping warranty python database index query",
        "cluster container network",
    )
).split()
_EXTRAS = ("2024", "3.14", "42%", "$19.99", "e-mail", "COVID-19", "naïve", "café", "Zürich", "東京", "données", "¿qué?")


def builtin_texts(count: int = TEXT_COUNT, seed: int = 20261127) -> list[str]:
    """Deterministic varied texts: a quarter short (2-12 words), half medium (12-60), a quarter long (60-220, so
    some are truncated), with capitals, punctuation, numbers and a few non-English words."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        low, high = (2, 12) if i % 4 == 0 else (60, 220) if i % 4 == 3 else (12, 60)
        words = [
            rng.choice(_EXTRAS) if rng.random() < 0.05 else rng.choice(_WORDS) for _ in range(rng.randint(low, high))
        ]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        text = " ".join(words)
        texts.append(text + rng.choice(("", ".", "?", "!", " ...")))
    return texts


def encode(tokenizer_json: str, texts: Sequence[str], max_length: int, lowercase: bool) -> list[list[int]]:
    """Token ids with special tokens, truncated at ``max_length`` (no padding)."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return [e.ids for e in tokenizer.encode_batch([t.lower() if lowercase else t for t in texts])]


Run = Callable[[list[list[int]]], Iterable[Any]]
"""Runs one batch of token ids through a model; one result per input (a vector, or sparse (indices, values))."""


def batch_run(model: Steps) -> Run:
    """One batch of token ids through ``model``'s three steps, start to finish."""
    return lambda ids: model.finish(model.launch(model.prepare(ids)))


class LazyRun:
    """A :data:`Run` whose model is built on the first batch: a reference that costs nothing (a compile, a
    session) when the agreement comes from the cache."""

    def __init__(self, build: Callable[[], Steps]) -> None:
        self._build = build
        self.model: Steps | None = None

    def __call__(self, ids: list[list[int]]) -> Iterable[Any]:
        if self.model is None:
            self.model = self._build()
        return batch_run(self.model)(ids)


def measure(
    form: str, reference: Run, candidate: Run, token_ids: list[list[int]], *, sparse: bool,
    switch: Callable[[], None] = lambda: None,
) -> Agreement:  # fmt: skip
    """Run every input through the reference, call ``switch`` (which may turn the reference into the candidate, as
    a torch model converted in place), then through the candidate, in length-sorted batches; compare per input
    (sparse rows are (indices, values) pairs, compared as vocabulary-sized vectors)."""
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    batches = [[token_ids[i] for i in order[start : start + _BATCH]] for start in range(0, len(order), _BATCH)]
    expected = [row for batch in batches for row in reference(batch)]
    switch()
    got = [row for batch in batches for row in candidate(batch)]
    similarity = _sparse_cosine if sparse else _cosine
    values = np.array([similarity(a, b) for a, b in zip(expected, got, strict=True)])
    return Agreement(form, float(values.mean()), float(values.min()), len(values))


def _cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norms if norms > 0 else 1.0


def _sparse_cosine(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    size = int(max(a[0].max(initial=0), b[0].max(initial=0))) + 1
    dense_a, dense_b = np.zeros(size), np.zeros(size)
    dense_a[a[0]], dense_b[b[0]] = a[1], b[1]
    return _cosine(dense_a, dense_b)
