"""The in-process embedding cache: its keys and its byte-bounded LRU.

A key is the SHA-256 of everything that decides a vector: the model's identity and revision, its engine, precision,
device type, kind, pooling and tokenizer, the input length it truncates to, and per input the text as the model
sees it (the prompt already prepended, lower-cased where the model says so), whether it is truncated and from which
side. ``dimensions`` and ``normalize`` are applied after the cache, so an entry holds the model's full-size,
unnormalized vector and serves every variant of them.

Event-loop only: nothing here locks.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from embedserve.engines.base import ModelInfo

KEY_FORMAT = "embedserve-cache-1"
"""Changes whenever what an entry holds or how keys are made changes, so old entries in a shared Redis are never
read as new ones."""

ENTRY_OVERHEAD_BYTES = 360
"""Bookkeeping per entry besides the vector's own bytes (key, array header, LRU node), measured with tracemalloc on
CPython 3.11; counted against --cache-bytes so the bound holds for small vectors too."""


def model_scope(info: ModelInfo, max_input_length: int) -> bytes:
    """The part of every key that names the model and how it computes (hashed once, at start-up)."""
    digest = hashlib.sha256()
    for part in (
        KEY_FORMAT, info.model_id, info.revision or "", info.kind, info.engine, info.dtype, info.quantize or "",
        info.device.split(":")[0], info.pooling, str(info.dim), str(max_input_length),
        hashlib.sha256(info.tokenizer_json.encode()).hexdigest(),
    ):  # fmt: skip
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.digest()


def input_key(scope: bytes, text: str, *, truncate: bool, direction: str) -> bytes:
    """The key of one input (``text`` as the model sees it) under a model's scope: 32 bytes."""
    digest = hashlib.sha256(scope)
    digest.update(b"T" if truncate else b"F")
    digest.update(direction.encode())
    digest.update(b"\0")
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.digest()


class Entry:
    """One cached input: the model's full-size float32 vector (read-only) and the input's token count, which usage
    reports for a cached input as for a computed one."""

    __slots__ = ("expires", "tokens", "vector")

    def __init__(self, vector: np.ndarray, tokens: int, expires: float = float("inf")) -> None:
        self.vector = vector
        self.tokens = tokens
        self.expires = expires

    @classmethod
    def of(cls, row: np.ndarray, tokens: int) -> Entry:
        """An entry owning a copy of ``row``: a row of a batch's output would otherwise keep the whole batch alive."""
        vector = np.array(row, dtype=np.float32, copy=True)
        vector.flags.writeable = False
        return cls(vector, tokens)

    @property
    def nbytes(self) -> int:
        """What it is counted as against the byte bound."""
        return self.vector.nbytes + ENTRY_OVERHEAD_BYTES


class LocalCache:
    """Least recently used entries are evicted first, until the entries fit ``max_bytes``; with a ``ttl``, an
    entry older than it is a miss (and is dropped)."""

    def __init__(self, max_bytes: int, ttl: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.bytes = 0
        self.evictions = 0
        """Entries dropped to make room (expired ones are not counted)."""
        self._clock = clock
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Entry | None:
        """The entry, now the most recently used; None when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: Entry) -> None:
        """Store (or refresh) an entry, evicting the least recently used ones until it fits. An entry larger than
        the whole cache is not stored."""
        size = entry.nbytes
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        if self.ttl is not None:
            entry = Entry(entry.vector, entry.tokens, self._clock() + self.ttl)
        while self.bytes + size > self.max_bytes:
            self._remove(next(iter(self._entries)))
            self.evictions += 1
        self._entries[key] = entry
        self.bytes += size

    def _remove(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key).nbytes
