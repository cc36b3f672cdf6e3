"""What every engine hands the core: a :class:`ModelInfo` describing the loaded model, and an object implementing
:class:`InferenceModel` that the model's backend thread drives. Plain Python, no inference runtime imported."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from embedserve.engines.warmup import ForwardCost


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the server needs to know about a loaded model."""

    model_id: str
    revision: str | None
    """The hub commit it was loaded from when known (a Hugging Face cache snapshot), else ``--revision``."""
    path: str
    architecture: str
    kind: str
    pooling: str
    dim: int
    max_input_length: int
    dtype: str
    device: str
    tokenizer_json: str = field(repr=False)
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    lowercase: bool = False
    labels: tuple[str, ...] = ()
    """Output labels of a classifier or reranker, in logit order."""
    activation: str = "auto"
    """Scores of a classifier or reranker: sigmoid, softmax, none, or auto (sigmoid for one label, else softmax)."""
    engine: str = "torch"
    """The inference runtime serving it: torch, onnx (ONNX Runtime) or openvino."""
    quantize: str | None = None
    """``int8`` when its weights were quantized."""
    agreement: Agreement | None = None
    """How closely its reduced precision (bfloat16, int8) reproduces float32, measured at start-up; None in
    float32 and on CUDA."""

    image_tokens: int = 0
    """What one image costs a batch, in the positions its vision tower computes (patches and a class token); 0 for
    models that take no images."""
    length_multiple: int = 1
    """The engine pads each batch of texts to a multiple of this many tokens (see :func:`padded_length`); the packer
    weighs padding by the same rule."""
    graph: str | None = None
    """How torch runs the forward pass: ``torchscript`` (a checked trace, on a CPU) or ``eager``; None on the graph
    engines (ONNX Runtime, OpenVINO), which always run a graph."""
    passes: int = 1
    """Forward passes it computes at once when several batches wait (:class:`ParallelModel`); 1: one at a time."""

    @property
    def dimensions(self) -> int | None:
        """Length of the vectors it returns (dense or sparse); None for scoring models, whose output is labels."""
        return self.dim if self.kind in ("embedding", "sparse", "multimodal") else None


EXACT_SINGLE_LENGTH = 32
"""A single input of at most this many tokens keeps its own length (see :func:`padded_length`)."""


def padded_length(longest: int, multiple: int, cap: int, rows: int = 2) -> int:
    """The sequence length a batch of ``rows`` inputs whose longest has ``longest`` tokens is padded to: the next
    multiple of ``multiple``, but never past ``cap`` (the model's maximum input length) nor below ``longest``.

    A single input of at most :data:`EXACT_SINGLE_LENGTH` tokens keeps its own length: that is the latency-bound
    case (one short query at a time), where padding would only add work, and its 32 lengths are few enough for an
    engine that compiles per shape to keep them all. A longer single input is padded like a batch: with exact
    lengths each of the up to ``cap`` lengths a lone input can have is a shape of its own (134 distinct ones in
    four minutes of the overload benchmark's soak, whose first sight of each grew OpenVINO's kernel cache by about
    0.4 MiB, for at most 7 tokens of padding on 33 or more)."""
    if multiple <= 1 or (rows <= 1 and longest <= EXACT_SINGLE_LENGTH):
        return longest
    return max(longest, min(cap, -(-longest // multiple) * multiple))


def shape_rows(count: int) -> int:
    """The most inputs, at most ``count``, that a batch holds for an engine that compiles per shape: every count up
    to 8, even counts up to 16, multiples of 4 up to 32, then of 8. That is 16 row counts up to 32 instead of 32;
    the inputs left out ride the next batch (no padding rows: the forward pass computes nothing more)."""
    if count <= 8:
        return count
    step = 2 if count <= 16 else 4 if count <= 32 else 8
    return count - count % step


@dataclass(frozen=True)
class Agreement:
    """Cosine of a reduced-precision form's vectors to float32's over a built-in set of texts."""

    form: str
    """What was compared with float32: ``bfloat16`` or ``int8``."""
    mean_cosine: float
    min_cosine: float
    texts: int


class InferenceModel(Protocol):
    """What the backend thread needs from a model. Every method runs on that one thread.

    ``finish`` yields one row per input: a float32 vector (embedding), an (indices, values) pair of arrays
    (sparse), or a float32 logits vector (rerank, classify)."""

    def prepare(self, token_ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None) -> Any:
        """Pad a batch (and its token type ids, for text pairs) and move it to the device."""

    def launch(self, prepared: Any) -> Any:
        """Start the forward pass (and pooling) for a prepared batch."""

    def finish(self, launched: Any) -> Iterable[Any]:
        """Wait for a launched batch; one host-side result per input, in batch order."""

    def warmup(self, max_batch_tokens: int) -> ForwardCost:
        """Run representative batches so slow first calls and out-of-memory show at start-up. Returns the cost of a
        forward pass: its fixed part (what the packer weighs batch count against padding with) and the per-token
        part (admission's first figure of the model's speed)."""

    def express(self) -> InferenceModel | None:
        """A second runner of the same model, on one thread, that computes while this one does (the express lane,
        :mod:`embedserve.core.express`), warmed up; None where the engine has none. Called once, on the thread that
        will drive it."""


class ParallelModel(InferenceModel, Protocol):
    """A CPU model that can compute several batches at once, each on its share of the threads (OpenVINO's streams):
    on few cores, two one-thread passes side by side do not wait on each other at every operator's end, as the two
    threads of one pass do, and the one thread a preempted core stalls is its own. :meth:`launch` and
    :meth:`finish` still run a pass on every thread: the backend uses them for a batch that finds nothing else
    waiting (one query at a time keeps the latency of every thread)."""

    passes: int
    """How many passes :meth:`start` may have computing at once."""
    most_tokens: int
    """The largest batch (inputs x padded length) :meth:`start` takes; a larger one goes through :meth:`launch`,
    alone."""

    def start(self, prepared: Any, landed: Callable[[], None]) -> Any:
        """Start a pass on a free share of the threads and return at once; ``landed`` is called, on another thread,
        when it has ended (also when it failed). At most :attr:`passes` at a time."""

    def collect(self, started: Any) -> Iterable[Any]:
        """The results of a pass from :meth:`start` (waiting for it if it has not landed), one per input; raises
        what the pass raised. Frees its share."""


class ImageModel(InferenceModel, Protocol):
    """A model that also embeds images (kind ``multimodal``): texts go through :meth:`prepare`, images through
    :meth:`preprocess_images` and :meth:`prepare_images`; :meth:`launch` and :meth:`finish` take either batch."""

    def preprocess_images(self, images: Sequence[Any]) -> list[Any]:
        """Decoded images (Pillow, RGB) -> the model's input per image (resized, cropped, normalized arrays), as
        its own image processor does it. Pure CPU work that holds no state: the one method called off the backend
        thread (on a worker thread), so it overlaps the forward passes."""

    def prepare_images(self, pixels: Sequence[Any]) -> Any:
        """Stack a batch of preprocessed images and move it to the device."""
