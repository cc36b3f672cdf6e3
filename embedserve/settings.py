"""Every setting, defined once.

Frozen dataclasses hold the configuration: :class:`ModelSettings` (one per served model, in
:mod:`embedserve.model_settings`) and :class:`Settings` (the server, its edge, plus its models). Each field carries
its help text and the environment variables it may be read from in ``field(metadata=...)``; :mod:`embedserve.cli`
builds the command line from these fields, so a flag, its env var and
its documentation can never drift apart. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
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
from embedserve.options import flag_name, opt, positive

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
    access_log_polls: bool = field(
        default=False,
        metadata=opt(
            "Write access-log lines for /health and /metrics too. Off by default: load balancers, orchestrators and "
            "Prometheus poll them every few seconds and their lines would bury the API's; the metrics count them "
            "either way. Turn it on to see who polls and what they got."
        ),
    )
    header_timeout: float = field(
        default=10.0,
        metadata=opt(
            "Seconds a client has to send a request's whole head (request line and headers), counted from the "
            "connection's opening for its first request and from the first byte for the next ones. Past it the "
            "client gets 408 and the connection closes (a slowloris client holds nothing for longer). A head "
            "takes milliseconds; raise it only for very slow links."
        ),
    )
    body_timeout: float = field(
        default=30.0,
        metadata=opt(
            "Seconds a client has to send a request's whole body once its head has arrived. Past it the client "
            "gets 408 and the connection closes. 30 s carries a --payload-limit body over a link of 64 KiB/s; raise "
            "it for slower clients, lower it to free connections held by stalled ones sooner."
        ),
    )
    keep_alive_timeout: float = field(
        default=5.0,
        metadata=opt(
            "Seconds an idle keep-alive connection stays open between requests. Behind a load balancer that reuses "
            "connections, set it above the balancer's idle timeout (e.g. 65 for an AWS ALB's 60) so the server "
            "never closes a connection the balancer is about to use."
        ),
    )
    max_header_bytes: int = field(
        default=32768,
        metadata=opt(
            "Largest request head (request line and headers) in bytes; a larger one gets 431 and the connection "
            "closes. Heads are counted as they arrive, so a larger one is never held in memory whole. 32 KiB fits "
            "long bearer tokens and trace headers with room to spare."
        ),
    )
    max_headers: int = field(
        default=100,
        metadata=opt(
            "Most header fields one request may carry; more get 431. Real clients send about 5 to 20; raise it "
            "only if a proxy in front adds many of its own."
        ),
    )
    max_connections: int = field(
        default=1024,
        metadata=opt(
            "Open client connections served at once. A connection over it gets 503 Overloaded (JSON, Retry-After) "
            "for its first request and is closed; past twice this many, new connections are closed unanswered. "
            "Keep it under the process's open-file limit (ulimit -n); 0 turns the cap off."
        ),
    )
    max_response_bytes: int = field(
        default=4_000_000,
        metadata=opt(
            "Largest answer of /tokenize, /decode and /embed_sparse, in bytes (estimated before it is built): these "
            "answers grow with what a client sends (a 1 MB text tokenizes to about 12 MB of JSON), unlike the "
            "embedding routes, which --max-client-batch-size bounds. A larger answer gets 422 saying how to ask for "
            "less."
        ),
    )
    image_max_bytes: int = field(
        default=10_000_000,
        metadata=opt("Largest image input in bytes, inline (after base64) or fetched; larger ones get 413. A fetch "
                     "stops reading at the limit."),
    )  # fmt: skip
    image_max_pixels: int = field(
        default=25_000_000,
        metadata=opt("Most pixels (width x height) an image input may have, checked from its header before it is "
                     "decoded, so a small file claiming a huge image (a decompression bomb) costs nothing; more "
                     "gets 422."),
    )  # fmt: skip
    image_formats: tuple[str, ...] = field(
        default=("JPEG", "PNG", "WEBP", "GIF", "BMP"),
        metadata=opt("Image formats decoded (Pillow's names; repeat or comma-separate). Others get 422, so rarely "
                     "used decoders are never fed untrusted bytes.", metavar="FORMAT"),
    )  # fmt: skip
    image_fetch_timeout: float = field(
        default=10.0,
        metadata=opt("Seconds one image URL may take in all: connecting, each read, redirects, the whole body. "
                     "Past it the input gets 422; the fetch never holds a batch (images are fetched before "
                     "admission)."),
    )  # fmt: skip
    image_fetch_max_redirects: int = field(
        default=3, metadata=opt("Redirects an image fetch follows; each new address is checked again.")
    )
    image_fetch_concurrency: int = field(
        default=16,
        metadata=opt("Image URLs fetched at once by the whole server; more wait (within --image-fetch-timeout). "
                     "0 turns URL inputs off: only data: URLs and base64 are accepted."),
    )  # fmt: skip
    image_fetch_allow_http: bool = field(
        default=False, metadata=opt("Fetch http:// image URLs too; by default only https:// ones.")
    )
    image_fetch_allow: tuple[str, ...] = field(
        default=(),
        metadata=opt("Addresses or networks (CIDR) image URLs may reach even though they are loopback, private, "
                     "link-local or otherwise not public, e.g. an internal image store (repeat or comma-separate). "
                     "Everything not public is refused by default, metadata services included.", metavar="CIDR"),
    )  # fmt: skip

    def check(self) -> None:
        """Reject values that cannot work, naming the flag to change."""
        if not 0 < self.port < 65536:
            raise SettingsError(f"--port {self.port} is not a TCP port (1-65535)")
        positive("payload_limit", self.payload_limit)
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            seconds = getattr(self, name)
            if not seconds > 0:
                raise SettingsError(f"{flag_name(name)} must be a positive number of seconds, got {seconds}")
        if self.max_header_bytes < 1024:
            raise SettingsError(f"--max-header-bytes must be at least 1024 (a usable request head), got "
                                f"{self.max_header_bytes}")  # fmt: skip
        positive("max_headers", self.max_headers)
        if self.max_connections < 0:
            raise SettingsError(f"--max-connections must be 0 (off) or positive, got {self.max_connections}")
        positive("max_response_bytes", self.max_response_bytes)
        positive("image_max_bytes", self.image_max_bytes)
        positive("image_max_pixels", self.image_max_pixels)
        if not self.image_fetch_timeout > 0:
            raise SettingsError(f"--image-fetch-timeout must be a positive number of seconds, got "
                                f"{self.image_fetch_timeout}")  # fmt: skip
        if self.image_fetch_max_redirects < 0 or self.image_fetch_concurrency < 0:
            raise SettingsError("--image-fetch-max-redirects and --image-fetch-concurrency must not be negative")
        for network in self.image_fetch_allow:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise SettingsError(f"--image-fetch-allow {network!r} is not an address or a network (CIDR)") from None


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

    gateway_token_file: str | None = field(
        default=None,
        metadata=opt(
            "File holding the fleet's shared gateway token (see `embedserve gateway`). When set (or "
            "EMBEDSERVE_GATEWAY_TOKEN is), every route but /health and /metrics answers 401 unless the request "
            "carries the token in X-Embedserve-Gateway-Token: a worker then accepts only its gateway.",
            tei_env=False,
        ),
    )
    gateway_token: str | None = field(
        default=None,
        repr=False,  # a secret, like the API keys
        metadata=opt(
            "The shared gateway token itself, for when a file is awkward (prefer --gateway-token-file: a flag "
            "shows in the process list). Exclusive with --gateway-token-file.",
            tei_env=False,
            metavar="TOKEN",
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
        if self.gateway_token is not None and self.gateway_token_file is not None:
            raise SettingsError("--gateway-token and --gateway-token-file are exclusive: give one")
        if self.gateway_token is not None and not self.gateway_token.strip():
            raise SettingsError("--gateway-token must not be empty")


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """The embedding cache: vectors already computed are answered without the model (see the README's Cache)."""

    cache_bytes: int = field(
        default=64 * 2**20,
        metadata=opt(
            "Memory the in-process embedding cache may hold, in bytes, vectors and bookkeeping counted (an entry "
            "of a 384-dimension model takes about 1.9 KB, so the default 64 MiB holds about 35,000). Least recently "
            "used entries go first. A miss costs a few microseconds per input (measured: see the README), so it "
            "is on by default; 0 turns the in-process cache off.",
            tei_env=False,
        ),
    )
    cache_ttl: float | None = field(
        default=None,
        metadata=opt(
            "Seconds an entry stays usable, locally and in --cache-url. Unset: until evicted (a model's vectors do "
            "not change while its files, engine and precision are the same, and those are part of the key).",
            tei_env=False,
        ),
    )
    cache_url: str | None = field(
        default=None,
        repr=False,  # may carry a password (redis://:secret@host)
        metadata=opt(
            "redis:// (or rediss://) URL of a Redis shared by a fleet of workers, looked up after the in-process "
            "cache misses and written after each computation. Redis down or slow never fails a request: past "
            "--cache-timeout the inputs are computed, the error is counted and logged at most every 10 s. Unset: "
            "no shared cache.",
            metavar="URL",
            tei_env=False,
        ),
    )
    cache_timeout: float = field(
        default=0.05,
        metadata=opt(
            "Seconds one lookup or write in --cache-url may take before it counts as an error and the inputs are "
            "computed instead. After an error the shared cache is skipped for a second, so a Redis that is down "
            "costs at most this once a second. A same-zone Redis answers in about a millisecond.",
            tei_env=False,
        ),
    )

    @property
    def enabled(self) -> bool:
        """True when either cache is configured."""
        return self.cache_bytes > 0 or self.cache_url is not None

    def check(self) -> None:
        """Reject values that cannot work, naming the flag to change."""
        if self.cache_bytes < 0:
            raise SettingsError(f"--cache-bytes must be 0 (off) or positive, got {self.cache_bytes}")
        if self.cache_ttl is not None and not self.cache_ttl > 0:
            raise SettingsError(f"--cache-ttl must be a positive number of seconds, got {self.cache_ttl}")
        if not self.cache_timeout > 0:
            raise SettingsError(f"--cache-timeout must be a positive number of seconds, got {self.cache_timeout}")
        if self.cache_url is not None and not self.cache_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("--cache-url must be a redis://, rediss:// or unix:// URL")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The whole configuration: the server, its edge and the models it serves."""

    server: ServerSettings = field(default_factory=ServerSettings)
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    models: tuple[ModelSettings, ...] = field(default_factory=lambda: (ModelSettings(),))

    def check(self) -> None:
        """Check every part and the parts against each other."""
        self.server.check()
        self.edge.check()
        self.cache.check()
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
