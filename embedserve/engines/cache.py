"""The on-disk cache of derived model files: exported and optimized ONNX graphs, int8 graphs, agreement figures.

Entries live under ``<cache dir>/<key>/``, where the key hashes the content of the model's files (not their path
or dates), the kind being served and the export format, so a changed model or a new exporter gets new entries and
the same model under another path reuses them. Each artifact is built into a temporary file in the same directory
and renamed into place, then its SHA-256 is written beside it; an artifact whose recorded hash does not match its
bytes (a crash mid-write, a truncated copy, a disk error) is rebuilt, never served. A lock file serializes builders
of the same entry across processes (several workers starting at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("embedserve.engines.cache")

_CHUNK = 4 * 2**20
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/embedserve`` (``~/.cache/embedserve`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "embedserve"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_key(model_dir: Path, *parts: str) -> str:
    """A key for a model directory's content plus ``parts`` (kind, format version, a shipped graph's hash...): the
    names and SHA-256 of the config, tokenizer and weight files at its top level (a hub repo's other ONNX variants
    in subfolders are not read)."""
    digest = hashlib.sha256("\0".join(parts).encode())
    for path in sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(_MODEL_FILE_SUFFIXES)):
        digest.update(f"\0{path.name}\0{file_sha256(path)}".encode())
    return digest.hexdigest()[:32]


class ArtifactCache:
    """One model's cache directory."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = root / key

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.dir / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def valid(self, name: str) -> bool:
        """Whether ``name`` is present and its bytes match the hash recorded when it was built."""
        path, recorded = self.dir / name, self.dir / f"{name}.sha256"
        if not path.is_file() or not recorded.is_file():
            return False
        return recorded.read_text().strip() == file_sha256(path)

    def get(self, name: str, build: Callable[[Path], None], what: str) -> Path:
        """The artifact ``name``, built by ``build(temporary_path)`` when it is missing or damaged."""
        path = self.dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if self.valid(name):
                return path
            if path.exists():
                log.warning("cached %s at %s is damaged or incomplete; rebuilding it", what, path)
            tmp = self.dir / f".{name}.{os.getpid()}.tmp"
            try:
                build(tmp)
                digest = file_sha256(tmp)
                os.replace(tmp, path)
                (self.dir / f"{name}.sha256").write_text(digest + "\n")
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def read_json(self, name: str) -> Any:
        """A small JSON record, or None when absent or unreadable."""
        try:
            return json.loads((self.dir / name).read_text())
        except (OSError, ValueError):
            return None

    def write_json(self, name: str, value: Any) -> None:
        """Write a small JSON record atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, self.dir / name)
