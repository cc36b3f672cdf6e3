"""How one model is loaded and batched: :class:`ModelSettings` (re-exported by :mod:`embedserve.settings`, where the
server's settings live). Each field carries its help text and environment variables in ``field(metadata=...)``;
:mod:`embedserve.cli` builds the command line from them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from embedserve.hardware import available_cores
from embedserve.options import SettingsError, opt, positive

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Engine = Literal["auto", "torch", "onnx", "openvino"]
Quantize = Literal["int8"]
Pooling = Literal["cls", "mean", "last-token", "splade"]
Kind = Literal["embedding", "sparse", "rerank", "classify", "multimodal"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """How one model is loaded and batched."""

    model_id: str = field(
        default=DEFAULT_MODEL_ID,
        metadata=opt(
            "Hugging Face hub id or local directory of the model; repeat it to serve several models. The default, "
            "all-MiniLM-L6-v2, is installed with embedserve and loads offline. Hub ids go through the normal HF cache "
            "(HF_HOME, HF_TOKEN, HF_HUB_OFFLINE)."
        ),
    )
    revision: str | None = field(
        default=None,
        metadata=opt("Hub revision (branch, tag or commit) to load. Ignored for local directories."),
    )
    served_model_name: str | None = field(
        default=None,
        metadata=opt(
            "Name clients use in the `model` field and that responses report. Defaults to --model-id. Pick a short "
            "stable name so clients survive a model upgrade. With several --model-id, give one per model, in order."
        ),
    )
    engine: Engine = field(
        default="auto",
        metadata=opt(
            "Inference runtime. auto: torch on CUDA; on a CPU OpenVINO, else ONNX Runtime (the fastest measured here, "
            "see the README), falling back to torch for a model the exported graph cannot serve. onnx and openvino "
            "run the model's shipped onnx/model.onnx or a graph exported once and cached (--engine-cache-dir)."
        ),
    )
    dtype: Dtype = field(
        default="auto",
        metadata=opt(
            "Numeric precision. auto: float16 on CUDA; on a CPU bfloat16 where the CPU computes it natively "
            "(AVX-512 BF16, AMX) and the start-up check against float32 gives a mean cosine >= 0.9999 (embedding "
            "and sparse models), else float32. The choice and its measured agreement are logged and in /info."
        ),
    )
    quantize: Quantize | None = field(
        default=None,
        metadata=opt(
            "int8: dynamic int8 with per-channel weights on ONNX Runtime (CPU only; embedding and sparse models), "
            "about 2x faster than float32 at a mean cosine of about 0.99 to it; the agreement measured at start-up "
            "is logged and shown in /info. Unset: no quantization."
        ),
    )
    torchscript: bool = field(
        default=True,
        metadata=opt(
            "With --engine torch on a CPU, run dense and sparse models' forward pass as a TorchScript trace, taken "
            "at start-up and checked against the eager model on other batch shapes (the model stays eager where "
            "tracing fails or differs; /info says which). It removes Python's fixed few milliseconds from every "
            "pass: 11.2 -> 7.9 ms for one short input of all-MiniLM-L6-v2 on 2 cores. --no-torchscript keeps eager."
        ),
    )
    intra_op_threads: int | None = field(
        default=None,
        metadata=opt(
            "Threads one forward pass uses on a CPU. Default: the cores this process may use (its CPU affinity, "
            "capped by a container's CPU quota)."
        ),
    )
    parallel_passes: int | None = field(
        default=None,
        metadata=opt(
            "With OpenVINO on a CPU (--engine openvino, or auto where it picks it): how many batches compute at "
            "once, each on its share of the --intra-op-threads, while more than one batch is waiting (a batch that "
            "finds nothing else waiting still runs alone, on every thread). Side by side, one-thread passes do not "
            "wait on each other at the end of every operator as the threads of one pass do: on 2 cores, 32 clients "
            "of mixed lengths got 169 instead of 153 emb/s. Default: OpenVINO's choice for the CPU (2 on 2 cores). "
            "It costs a second compiled copy of the model (about 260 MiB more RSS for all-MiniLM-L6-v2, its streams' "
            "scratch included); 1 turns it off. "
            "SPLADE models and the other engines compute one pass at a time."
        ),
    )
    engine_cache_dir: str | None = field(
        default=None,
        metadata=opt(
            "Where exported and optimized ONNX graphs, int8 graphs, compiled OpenVINO blobs and agreement figures "
            "are kept, keyed by the model files' content. Default: $XDG_CACHE_HOME/embedserve (~/.cache/embedserve)."
        ),
    )
    device: str = field(
        default="auto",
        metadata=opt("auto (CUDA if available, else CPU), cpu, cuda or cuda:N.", metavar="{auto,cpu,cuda,cuda:N}"),
    )
    kind: Kind | None = field(
        default=None,
        metadata=opt(
            "What the model does: embedding (dense vectors), sparse (SPLADE), rerank (a cross-encoder with one "
            "score), classify (a classifier with labels), multimodal (a CLIP-style dual encoder: texts and images). "
            "Default: detected from its files; see the README."
        ),
    )
    pooling: Pooling | None = field(
        default=None,
        metadata=opt(
            "How token states become one vector. Default: the model's sentence-transformers pooling config; without "
            "one, cls for encoders and last-token for decoder models. splade makes a masked-LM model sparse."
        ),
    )
    prompts: dict[str, str] = field(
        default_factory=dict,
        metadata=opt(
            "Named prompts added to (and overriding) those of the model's sentence-transformers config, for "
            "`prompt_name` and --default-prompt-name. Set in a --config file.",
            cli=False,
        ),
    )
    max_concurrent_requests: int = field(
        default=512,
        metadata=opt(
            "Admission bound, counted in inputs (a request of 32 texts takes 32 slots) across queued and running "
            "work. When no slot is free a request gets 429 at once. Raise it if clients see 429 while the device is "
            "not busy; lower it to bound memory and queueing latency."
        ),
    )
    max_queue_time: float = field(
        default=1.0,
        metadata=opt(
            "Longest predicted wait, in seconds, before a request's first forward pass. Admission predicts the wait "
            "from the tokens already admitted and the tokens per second the model has been measured to compute; a "
            "request that would wait longer gets 429 at once, with Retry-After from the predicted drain time. The "
            "default of 1 s keeps a search box responsive: past about a second a user notices, and a fast 429 lets "
            "the client retry elsewhere instead of queueing. Raise it for batch jobs; 0 turns the prediction off "
            "(only --max-concurrent-requests bounds the queue)."
        ),
    )
    priority_reserve: float = field(
        default=0.1,
        metadata=opt(
            "Share of --max-concurrent-requests kept for high-priority requests: normal and low ones are refused "
            "once the rest is taken, so interactive queries still get in while other work fills the model (with "
            "512 slots, 51 are kept). 0 keeps none."
        ),
    )
    low_priority_share: float = field(
        default=0.5,
        metadata=opt(
            "Share of --max-concurrent-requests and of --max-queue-time that low-priority requests (bulk "
            "backfills) may use: they are refused once that many slots are taken or their predicted wait is over "
            "that share of the limit, which leaves the rest of the model to normal and high priority."
        ),
    )
    lane_yield: bool = field(
        default=True,
        metadata=opt(
            "While a higher priority lane has requests (one queued in the last second), cut each lower lane's "
            "batches to about the compute time of the higher lane's own batches, so an interactive query waits for "
            "at most about one of them instead of a full batch. The lower lanes lose throughput meanwhile (on 2 CPU "
            "cores a saturating low flood got 68 batches through in 20 s instead of 104); --no-lane-yield keeps "
            "their batches full."
        ),
    )
    express_lane: bool = field(
        default=True,
        metadata=opt(
            "Compute high-priority batches on a second, one-thread copy of the model while a lower lane's batch "
            "computes, instead of after it (OpenVINO only; other engines have none). The copy is built in the "
            "background on the model's first high-priority request; from then on lower lanes keep full batches (no "
            "--lane-yield). It costs memory, about 150 MiB for all-MiniLM-L6-v2 (more than the weights: its own "
            "kernels and buffers); --no-express-lane never builds it."
        ),
    )
    max_batch_tokens: int = field(
        default=16384,
        metadata=opt(
            "Padded token budget of one forward pass (inputs x longest input). Larger batches use a GPU better until "
            "it is compute bound; raise it until throughput stops growing, and lower it if warm-up runs out of "
            "memory. Inputs longer than this are truncated or rejected."
        ),
    )
    max_batch_requests: int | None = field(
        default=None,
        metadata=opt(
            "Most inputs in one forward pass, whatever their length. Unset: 32 on a CPU, where larger batches gain "
            "little (at most 1.1x for short texts in the README's benchmark) and the largest batch sets the memory "
            "high-water mark; on a GPU only --max-batch-tokens limits a batch."
        ),
    )
    max_client_batch_size: int = field(
        default=32,
        metadata=opt(
            "Most inputs one request may carry; more get 422. Must not exceed --max-concurrent-requests. Clients can "
            "read it from /info to split their work."
        ),
    )
    auto_truncate: bool = field(
        default=True,
        metadata=opt(
            "Truncate inputs longer than the model's maximum input length when a request does not say `truncate`. "
            "With --no-auto-truncate such inputs get 422 naming the limit."
        ),
    )
    chunk_long_inputs: bool = field(
        default=False,
        metadata=opt(
            "Embed inputs longer than the model's maximum input length in chunks when a request does not say "
            "`chunk`: each is cut on token boundaries into chunks of the maximum (overlapping by --chunk-overlap), "
            "every chunk is computed in the normal batches, and the chunk vectors are pooled into one (their mean "
            "weighted by length, then normalized). Costs one forward pass per chunk instead of a truncated input."
        ),
    )
    chunk_overlap: int = field(
        default=32,
        metadata=opt(
            "Tokens each chunk of a chunked input repeats from the end of the chunk before it (at most half a "
            "chunk), so that text cut at a chunk boundary is also seen whole. 0 cuts chunks end to end."
        ),
    )
    tokenization_workers: int | None = field(
        default=None,
        metadata=opt(
            "Threads that tokenize requests off the event loop. Default: available cores - 1 (at least 1, at most 64). "
            "Tokenizers release the GIL, so more workers help when many long inputs arrive at once."
        ),
    )
    default_prompt_name: str | None = field(
        default=None,
        metadata=opt(
            "Name of a prompt from the model's sentence-transformers config prepended to every input of requests that "
            "name no prompt. Exclusive with --default-prompt."
        ),
    )
    default_prompt: str | None = field(
        default=None,
        metadata=opt(
            "Literal text prepended to every input of requests that name no prompt. Exclusive with "
            "--default-prompt-name."
        ),
    )

    @property
    def served_name(self) -> str:
        """The name clients address this model by."""
        return self.served_model_name or self.model_id

    def resolved_tokenization_workers(self) -> int:
        """Worker count, with the default derived from the CPU count."""
        if self.tokenization_workers is not None:
            return self.tokenization_workers
        return max(1, min(available_cores() - 1, 64))

    def _check_lanes(self) -> None:
        if not 0 <= self.priority_reserve < 1:
            raise SettingsError(f"--priority-reserve must be at least 0 and below 1, got {self.priority_reserve}")
        if not 0 < self.low_priority_share <= 1:
            raise SettingsError(f"--low-priority-share must be above 0 and at most 1, got {self.low_priority_share}")

    def check(self) -> None:
        """Reject values and combinations that cannot work, naming the flag to change."""
        positive("max_concurrent_requests", self.max_concurrent_requests)
        positive("max_batch_tokens", self.max_batch_tokens)
        if self.max_queue_time < 0:
            raise SettingsError(f"--max-queue-time must be 0 (off) or positive, got {self.max_queue_time}")
        self._check_lanes()
        positive("max_client_batch_size", self.max_client_batch_size)
        if self.chunk_overlap < 0:
            raise SettingsError(f"--chunk-overlap must be 0 or positive, got {self.chunk_overlap}")
        for name in ("max_batch_requests", "tokenization_workers", "intra_op_threads", "parallel_passes"):
            value = getattr(self, name)
            if value is not None:
                positive(name, value)
        self._check_engine()
        if not self.model_id.strip():
            raise SettingsError("--model-id must not be empty")
        if not _DEVICE_RE.match(self.device):
            raise SettingsError(f"--device {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        if self.max_client_batch_size > self.max_concurrent_requests:
            raise SettingsError(
                f"--max-client-batch-size ({self.max_client_batch_size}) is larger than --max-concurrent-requests "
                f"({self.max_concurrent_requests}), so a full-size request could never be admitted; lower "
                "--max-client-batch-size or raise --max-concurrent-requests"
            )
        if self.default_prompt_name is not None and self.default_prompt is not None:
            raise SettingsError("--default-prompt-name and --default-prompt are exclusive; set only one of them")
        if self.pooling == "splade" and self.kind not in (None, "sparse"):
            raise SettingsError(f"--pooling splade makes a sparse model, but --kind is {self.kind}; drop one of them")
        if self.kind == "sparse" and self.pooling not in (None, "splade"):
            raise SettingsError(f"--kind sparse pools with splade, not {self.pooling}; drop --pooling")

    def _check_engine(self) -> None:
        cuda = self.device.startswith("cuda")
        if self.engine in ("onnx", "openvino") and cuda:
            raise SettingsError(
                f"--engine {self.engine} runs on the CPU; use --engine torch (or auto) with {self.device}"
            )
        if self.quantize is not None:
            if cuda:
                raise SettingsError("--quantize int8 runs on the CPU; drop it or use --device cpu")
            if self.engine not in ("auto", "onnx"):
                raise SettingsError(
                    f"--quantize int8 runs on ONNX Runtime; use --engine onnx or auto, not {self.engine}"
                )
            if self.dtype not in ("auto", "float32"):
                raise SettingsError(f"--quantize int8 replaces --dtype {self.dtype}; drop one of them")
            if self.kind in ("rerank", "classify"):
                raise SettingsError(
                    "--quantize int8 serves embedding and sparse models only (its agreement check compares vectors)"
                )
        if self.engine == "onnx" and self.dtype not in ("auto", "float32"):
            raise SettingsError(
                f"--engine onnx runs float32 (or int8); use --engine openvino or torch for {self.dtype}"
            )
        if self.dtype == "float16" and self.device == "cpu":
            raise SettingsError("--dtype float16 is for CUDA; on a CPU use bfloat16 (where the CPU has it) or float32")
