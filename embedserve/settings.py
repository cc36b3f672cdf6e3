"""Every setting, defined once.

Frozen dataclasses hold the configuration: :class:`ModelSettings` (one per served model, in
:mod:`embedserve.model_settings`) and :class:`Settings` (the server, its edge, plus its models). Each field carries
its help text and the environment variables it may be read from in ``field(metadata=...)``; :mod:`embedserve.cli`
builds the command line from these fields, so a flag, its env var and
its documentation can never drift apart. Nothing here reads the environment at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from embedserve.model_settings import DEFAULT_MODEL_ID as DEFAULT_MODEL_ID
from embedserve.model_settings import Dtype as Dtype
from embedserve.model_settings import Engine as Engine
from embedserve.model_settings import Kind as Kind
from embedserve.model_settings import ModelSettings as ModelSettings
from embedserve.model_settings import Pooling as Pooling
from embedserve.model_settings import Quantize as Quantize
from embedserve.options import SettingsError as SettingsError
from embedserve.options import opt, positive

LogLevel = Literal["debug", "info", "warning", "error"]


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
        positive("payload_limit", self.payload_limit)


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
        positive("rate_limit_burst", self.rate_limit_burst)
        if self.rate_limit_tpm is not None:
            positive("rate_limit_tpm", self.rate_limit_tpm)
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
