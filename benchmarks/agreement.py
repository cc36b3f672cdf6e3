"""Agreement of vectors with torch float32's on the same texts: cosine per text, its mean and minimum."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# "Near-lossless": the mean cosine to torch float32 an engine needs to count as the ceiling of the new targets.
NEAR_LOSSLESS_MEAN_COSINE = 0.9999


def cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (texts x dims) arrays."""
    a = np.asarray(vectors, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(norms, 1e-30))


def summary(values: np.ndarray) -> dict[str, Any]:
    """Mean and minimum cosine, with the number of texts."""
    return {"texts": int(values.size), "mean_cosine": float(values.mean()), "min_cosine": float(values.min())}


def compare(vectors: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per mix and overall: mean and min cosine of ``vectors`` against ``reference`` (mixes both have)."""
    mixes = [mix for mix in vectors if mix in reference]
    if not mixes:
        raise ValueError("no mix in common with the reference vectors")
    per_mix = {mix: cosines(vectors[mix], reference[mix]) for mix in mixes}
    out = summary(np.concatenate(list(per_mix.values())))
    out["mixes"] = {mix: summary(values) for mix, values in per_mix.items()}
    return out


def save(path: Path, vectors: Mapping[str, np.ndarray]) -> None:
    """Vectors per mix, as one .npz file."""
    with path.open("wb") as handle:
        np.savez(handle, **{mix: np.asarray(v, dtype=np.float32) for mix, v in vectors.items()})


def load(path: Path) -> dict[str, np.ndarray]:
    """Vectors per mix, from a file written by ``save``."""
    with np.load(path) as data:
        return {mix: data[mix] for mix in data.files}


def near_lossless(entry: Mapping[str, Any]) -> bool:
    """Whether a ceiling engine's result agrees with torch float32 closely enough. The torch engine is the reference
    itself (float16 on CUDA, where the CPU engines do not run)."""
    agreement = entry.get("agreement")
    if entry.get("engine") == "torch":
        return True
    return bool(agreement) and float(agreement["mean_cosine"]) >= NEAR_LOSSLESS_MEAN_COSINE
