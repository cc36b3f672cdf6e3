"""Choosing the numeric form a model is served in on a CPU, the same way for every engine.

``--dtype float32`` serves float32. ``--dtype bfloat16`` serves bfloat16 and reports its agreement with float32.
``--dtype auto`` serves bfloat16 only where the CPU computes it natively (AVX-512 BF16, AMX), the model's output is a
vector (embedding or sparse; a score has no cosine to check), and the agreement check gives a mean cosine of at least
:data:`~embedserve.engines.agreement.AUTO_THRESHOLD`; otherwise float32. The agreement of a form is measured once per
model, engine, library version and CPU, and cached with the model's derived files.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from embedserve import logs
from embedserve.engines import agreement
from embedserve.engines.agreement import Run
from embedserve.engines.base import Agreement
from embedserve.engines.cache import ArtifactCache
from embedserve.engines.describe import ModelDescription
from embedserve.hardware import cpu_name, native_bf16

log = logging.getLogger("embedserve.engines")

VECTOR_KINDS = ("embedding", "sparse")


def wants_bf16(requested: str, kind: str) -> bool:
    """Whether a CPU model should try bfloat16 at all (before the agreement check)."""
    if requested == "bfloat16":
        return True
    return requested == "auto" and kind in VECTOR_KINDS and native_bf16()


def cached_agreement(
    cache: ArtifactCache, *, engine: str, form: str, library: str, reference: Run, candidate: Run,
    desc: ModelDescription, switch: Callable[[], None] = lambda: None,
) -> Agreement | None:  # fmt: skip
    """``form``'s agreement with float32 for this model on this engine: from the cache, or measured now; None for a
    scoring model, whose scores have no cosine (served in ``form`` only when asked for explicitly). Either way
    ``switch`` has been called once when it returns (see :func:`~embedserve.engines.agreement.measure`)."""
    if desc.kind not in VECTOR_KINDS:
        switch()
        return None
    name = f"agreement-{engine}-{form}.json"
    stamp = {"library": library, "cpu": cpu_name(), "texts": agreement.TEXT_COUNT}
    saved = cache.read_json(name)
    if isinstance(saved, dict) and all(saved.get(key) == value for key, value in stamp.items()):
        found = Agreement(form, float(saved["mean_cosine"]), float(saved["min_cosine"]), int(saved["texts"]))
        log.info("%s agreement with float32 (measured before on this CPU): %s", form, _text(found))
        switch()
        return found
    t0 = time.perf_counter()
    ids = agreement.encode(desc.tokenizer_json, agreement.builtin_texts(),
                           desc.max_input_length, desc.lowercase)  # fmt: skip
    with logs.step(log, "checking %s against float32 on %d texts (once per model, engine and CPU)", form, len(ids)):
        measured = agreement.measure(form, reference, candidate, ids, sparse=desc.kind == "sparse", switch=switch)
    try:
        cache.write_json(name, {**dataclasses.asdict(measured), **stamp})
    except OSError as exc:  # a read-only or misconfigured cache costs a re-measurement next start, nothing more
        log.warning("cannot cache the agreement figures in %s: %s", cache.dir, exc)
    log.info("%s agreement with float32, measured in %.1fs: %s", form, time.perf_counter() - t0, _text(measured))
    return measured


def _text(found: Agreement) -> str:
    return f"mean cosine {found.mean_cosine:.6f}, min {found.min_cosine:.6f} over {found.texts} texts"


def pick_bf16(requested: str, measured: Agreement | None) -> bool:
    """Keep bfloat16? Always when asked for explicitly; with auto only when it agrees closely enough."""
    if requested == "bfloat16" or measured is None:
        return True
    keep = measured.mean_cosine >= agreement.AUTO_THRESHOLD
    if not keep:
        log.warning(
            "bfloat16 agrees with float32 only to a mean cosine of %.6f (< %s): serving float32",
            measured.mean_cosine, agreement.AUTO_THRESHOLD,
        )  # fmt: skip
    return keep
