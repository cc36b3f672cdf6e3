"""Every setting, defined once.

Two frozen dataclasses hold the configuration: :class:`ModelSettings` (one per served model) and :class:`Settings`
(the server, plus its models). Each field carries its help text and the environment variables it may be read from in
``field(metadata=...)``; :mod:`embedserve.cli` builds the command line from these fields, so a flag, its env var and
its documentation can never drift apart. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

Dtype = Literal["float16", "bfloat16", "float32"]
Pooling = Literal["cls", "mean", "last-token", "splade"]
Kind = Literal["embedding", "sparse", "rerank", "classify"]
LogLevel = Literal["debug", "info", "warning", "error"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class SettingsError(ValueError):
    """A setting, or a combination of settings, that cannot work. The message names the flag to change."""


def opt(help_text: str, *, tei_env: bool = True, metavar: str | None = None, cli: bool = True) -> dict[str, Any]:
    """Field metadata: the help text and whether the bare TEI-style env var (``MAX_BATCH_TOKENS``) is honoured.

    ``EMBEDSERVE_<NAME>`` is always honoured and wins over the bare name. ``cli=False`` fields are set only from a
    ``--config`` file (they are not scalars a flag could carry).
    """
    return {"help": help_text, "tei_env": tei_env, "metavar": metavar, "cli": cli}


def env_names(name: str, metadata: Any) -> list[str]:
    """The environment variables a field is read from, strongest first."""
    names = [f"EMBEDSERVE_{name.upper()}"]
    if metadata.get("tei_env", True):
        names.append(name.upper())
    return names


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """A field's type without ``| None``, and whether None is allowed (for the CLI and the config file)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def flag_name(name: str) -> str:
    """``max_batch_tokens`` -> ``--max-batch-tokens``."""
    return "--" + name.replace("_", "-")


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
    dtype: Dtype | None = field(
        default=None,
        metadata=opt(
            "Weights and activations dtype. Default: float16 on CUDA, float32 on CPU. bfloat16 trades a little "
            "precision for range on GPUs that support it; half precision on CPU is slow."
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
            "score), classify (a classifier with labels). Default: detected from its files; see the README."
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
            "Most inputs in one forward pass, whatever their length. Unset means only --max-batch-tokens limits a "
            "batch. On CPU a cap of 8-32 keeps padding waste and tail latency down."
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
    tokenization_workers: int | None = field(
        default=None,
        metadata=opt(
            "Threads that tokenize requests off the event loop. Default: CPU cores - 1 (at least 1, at most 64). "
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
        return max(1, min((os.cpu_count() or 2) - 1, 64))

    def check(self) -> None:
        """Reject values and combinations that cannot work, naming the flag to change."""
        _positive("max_concurrent_requests", self.max_concurrent_requests)
        _positive("max_batch_tokens", self.max_batch_tokens)
        _positive("max_client_batch_size", self.max_client_batch_size)
        if self.max_batch_requests is not None:
            _positive("max_batch_requests", self.max_batch_requests)
        if self.tokenization_workers is not None:
            _positive("tokenization_workers", self.tokenization_workers)
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


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Where and how the HTTP server listens."""

    hostname: str = field(
        default="127.0.0.1",
        metadata=opt(
            "Address to bind. The default only accepts local connections; use 0.0.0.0 to expose the server "
            "(the Docker images do). Read from EMBEDSERVE_HOSTNAME only: the bare HOSTNAME variable is the "
            "machine's name in most shells and containers.",
            tei_env=False,
        ),
    )
    port: int = field(
        default=3000,
        metadata=opt("TCP port to listen on (3000, like TEI). Ports below 1024 need root, which the images avoid."),
    )
    payload_limit: int = field(
        default=2_000_000,
        metadata=opt("Largest request body in bytes; bigger bodies get 413 before they are parsed."),
    )
    json_output: bool = field(
        default=False, metadata=opt("Log one JSON object per line (for log shippers) instead of plain text.")
    )
    allow_partial_start: bool = field(
        default=False,
        metadata=opt(
            "When one of several models fails to load, serve the others and report it as failed in /health and "
            "/info, instead of exiting."
        ),
    )
    log_level: LogLevel = field(
        default="info",
        metadata=opt("Lowest level logged. debug adds per-batch detail; warning keeps only problems and start-up."),
    )

    def check(self) -> None:
        """Reject values that cannot work, naming the flag to change."""
        if not 0 < self.port < 65536:
            raise SettingsError(f"--port {self.port} is not a TCP port (1-65535)")
        _positive("payload_limit", self.payload_limit)


@dataclass(frozen=True, kw_only=True)
class EdgeSettings:
    """What faces the clients and the operators: keys, rate limits, CORS, metrics, traces, shutdown."""

    api_key: tuple[str, ...] = field(
        default=(),
        repr=False,  # keys never reach logs, not even through a settings repr
        metadata=opt(
            "API key clients must send as `Authorization: Bearer <key>`; repeat the flag or separate keys with "
            "commas. With no key (and no --api-key-file) the API is open.",
            metavar="KEY",
        ),
    )
    api_key_file: str | None = field(
        default=None,
        metadata=opt("File with one API key per line (blank lines and # comments skipped); re-read on SIGHUP."),
    )
    metrics_auth: bool = field(
        default=False,
        metadata=opt("Require an API key on /metrics too. /health always stays open for load balancers."),
    )
    cors_allow_origin: tuple[str, ...] = field(
        default=(),
        metadata=opt(
            "Origins browsers may call from (repeat or comma-separate; * for any). Unset: no CORS headers.",
            metavar="ORIGIN",
        ),
    )
    rate_limit_rps: float = field(
        default=80.0,
        metadata=opt(
            "Requests per second each API key (each client address when auth is off) may make, on average; "
            "over it a request gets 429 RateLimited with Retry-After. 0 turns rate limiting off."
        ),
    )
    rate_limit_burst: int = field(
        default=50,
        metadata=opt("Requests a key may make at once above its --rate-limit-rps before being limited."),
    )
    rate_limit_tpm: int | None = field(
        default=None,
        metadata=opt(
            "Tokens per minute each key may embed, charged with the real token count. Unset: no token budget."
        ),
    )
    prometheus_port: int | None = field(
        default=None,
        metadata=opt("Also serve /metrics on this port (e.g. 9000, only reachable inside the cluster)."),
    )
    otlp_endpoint: str | None = field(
        default=None,
        metadata=opt(
            "OTLP/gRPC collector to export traces to (e.g. http://otel-collector:4317). Unset: no tracing and "
            "no tracing overhead."
        ),
    )
    otlp_service_name: str = field(default="embedserve", metadata=opt("service.name of the exported spans."))
    graceful_shutdown_timeout: float = field(
        default=30.0,
        metadata=opt(
            "Seconds SIGTERM/SIGINT waits for admitted requests to finish (while /health answers 503 and new "
            "requests get 503) before the process exits."
        ),
    )

    def check(self) -> None:
        """Reject values that cannot work, naming the flag to change."""
        if any(not key.strip() for key in self.api_key):
            raise SettingsError("--api-key must not be empty")
        if self.rate_limit_rps < 0:
            raise SettingsError(f"--rate-limit-rps must be 0 (off) or positive, got {self.rate_limit_rps}")
        _positive("rate_limit_burst", self.rate_limit_burst)
        if self.rate_limit_tpm is not None:
            _positive("rate_limit_tpm", self.rate_limit_tpm)
        if self.prometheus_port is not None and not 0 < self.prometheus_port < 65536:
            raise SettingsError(f"--prometheus-port {self.prometheus_port} is not a TCP port (1-65535)")
        if self.graceful_shutdown_timeout < 0:
            raise SettingsError("--graceful-shutdown-timeout must not be negative")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The whole configuration: the server, its edge and the models it serves."""

    server: ServerSettings = field(default_factory=ServerSettings)
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    models: tuple[ModelSettings, ...] = field(default_factory=lambda: (ModelSettings(),))

    def check(self) -> None:
        """Check every part and the parts against each other."""
        self.server.check()
        self.edge.check()
        if self.edge.prometheus_port == self.server.port:
            raise SettingsError("--prometheus-port must differ from --port")
        if not self.models:
            raise SettingsError("no model configured; pass --model-id")
        names: set[str] = set()
        for model in self.models:
            model.check()
            if model.served_name in names:
                raise SettingsError(f"two models are served as {model.served_name!r}; give each a --served-model-name")
            names.add(model.served_name)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise SettingsError(f"{flag_name(name)} must be at least 1, got {value}")


def field_docs(cls: type[Any]) -> list[tuple[str, str, list[str], Any]]:
    """(flag, help, env vars, default) for every field of a settings class; the README flag table is built from it."""
    rows = []
    for f in fields(cls):
        if f.metadata.get("cli", True):
            rows.append((flag_name(f.name), f.metadata["help"], env_names(f.name, f.metadata), f.default))
    return rows
