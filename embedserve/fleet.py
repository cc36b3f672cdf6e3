"""The fleet file: one YAML file that describes a gateway and the models behind it, one worker process per model.

The gateway routes by it, and ``embedserve deploy`` turns it into Compose, Kubernetes or Cloud Run (Terraform) files.
Example::

    gateway:
      port: 8080                      # where clients connect
      api_key_file: /run/secrets/keys # keys are checked at the gateway (optional)
      token_file: /run/secrets/token  # shared secret the gateway sends to workers (optional)
      trusted_proxies: [10.0.0.0/8]   # X-Forwarded-For is believed only from these
      rate_limit_rps: 80              # per key, as --rate-limit-rps (also rate_limit_burst, rate_limit_tpm)
      worker_auth: none               # or google-id-token: send workers a Google ID token (Cloud Run IAM)
      otlp_endpoint: http://otel-collector:4317  # the gateway's own traces (optional; workers: --otlp-endpoint)
    models:
      - name: minilm                  # the served name clients use in `model`
        model_id: sentence-transformers/all-MiniLM-L6-v2
        device: cpu                   # cpu or gpu
        replicas: {min: 1, max: 4}    # or a number: that many, fixed
        max_batch_tokens: 16384       # any model setting of --config / the flags, by name
      - name: reranker
        model_id: BAAI/bge-reranker-base
        device: gpu
        urls: [http://10.0.0.7:3000]  # where the workers listen; default http://<name>:<port>

A model entry takes every :class:`~embedserve.settings.ModelSettings` field by name (as ``--config`` does) plus the
fleet's own keys: ``device`` (cpu or gpu), ``replicas``, ``port`` (the worker's, default 3000) and ``urls``. Every
value is checked here, and an error names the file, the entry and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from embedserve.config import model_entry, read_yaml
from embedserve.options import SettingsError
from embedserve.settings import ModelSettings

WORKER_PORT = 3000
GATEWAY_PORT = 8080

Device = Literal["cpu", "gpu"]
WORKER_AUTH = ("none", "google-id-token")


@dataclass(frozen=True)
class Replicas:
    """How many worker processes serve a model: at least ``min``, scaled up to ``max``."""

    min: int = 1
    max: int = 1


@dataclass(frozen=True)
class FleetModel:
    """One model of the fleet and the workers that serve it."""

    settings: ModelSettings
    device: Device = "cpu"
    replicas: Replicas = field(default_factory=Replicas)
    port: int = WORKER_PORT
    urls: tuple[str, ...] = ()
    """Where its workers listen; empty means ``http://<name>:<port>`` (a Compose service or Kubernetes Service)."""

    @property
    def name(self) -> str:
        """The served name clients use in ``model``."""
        return self.settings.served_name

    @property
    def worker_urls(self) -> tuple[str, ...]:
        """The base URLs the gateway calls."""
        return self.urls or (f"http://{self.name}:{self.port}",)


@dataclass(frozen=True)
class GatewaySpec:
    """The public edge of the fleet."""

    port: int = GATEWAY_PORT
    hostname: str = "0.0.0.0"
    api_key_file: str | None = None
    token_file: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    cors_allow_origin: tuple[str, ...] = ()
    rate_limit_rps: float = 80.0
    """Per-key (per-address without keys) request rate, as ``--rate-limit-rps``; 0 turns it off."""
    rate_limit_burst: int = 50
    """Requests a key may make at once above its rate, as ``--rate-limit-burst``."""
    rate_limit_tpm: int | None = None
    """Tokens per minute per key, as ``--rate-limit-tpm``; unset: no token budget."""
    worker_auth: str = "none"
    """``google-id-token``: every call to a worker carries an ID token from the metadata server, for workers that
    are private Cloud Run services (see :mod:`embedserve.gateway.identity`); ``none``: only the gateway token."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC endpoint for the gateway's spans, as the worker's ``--otlp-endpoint``; unset: no spans."""
    otlp_service_name: str = "embedserve-gateway"
    """The ``service.name`` of the gateway's spans."""


@dataclass(frozen=True)
class Fleet:
    """A gateway and its models, in file order (the first model is the default one)."""

    gateway: GatewaySpec
    models: tuple[FleetModel, ...]

    def model(self, name: str) -> FleetModel | None:
        """The model served as ``name``, if any."""
        return next((m for m in self.models if m.name == name), None)


_FLEET_KEYS = {"device", "replicas", "port", "urls"}
_GATEWAY_TYPES: dict[str, Any] = {
    "port": int,
    "hostname": str,
    "api_key_file": str,
    "token_file": str,
    "trusted_proxies": list,
    "cors_allow_origin": list,
    "rate_limit_rps": float,
    "rate_limit_burst": int,
    "rate_limit_tpm": int,
    "worker_auth": str,
    "otlp_endpoint": str,
    "otlp_service_name": str,
}


def load_fleet(path: str | Path) -> Fleet:
    """Read and check a fleet file; raises SettingsError naming the bad key."""
    where = f"fleet file {path}"
    return parse_fleet(read_yaml(path, where), where)


def parse_fleet(data: Any, where: str = "fleet file") -> Fleet:
    """A fleet from already-parsed YAML (see :func:`load_fleet`)."""
    if not isinstance(data, dict):
        raise SettingsError(f"{where}: expected a mapping with `models:` (and optionally `gateway:`)")
    unknown = set(data) - {"gateway", "models"}
    if unknown:
        raise SettingsError(f"{where}: unknown top-level key {sorted(map(str, unknown))[0]!r}; known: gateway, models")
    gateway = _gateway(data.get("gateway") or {}, f"{where}: gateway")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"{where}: expected a `models:` list with at least one entry")
    models = tuple(_model(entry, f"{where}: models[{i}]") for i, entry in enumerate(entries))
    names = [m.name for m in models]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SettingsError(f"{where}: models[{i}].name {name!r} is used twice; give each model its own name")
    return Fleet(gateway, models)


def _gateway(data: Any, where: str) -> GatewaySpec:
    if not isinstance(data, dict):
        raise SettingsError(f"{where} must be a mapping")
    values: dict[str, Any] = {}
    for key, value in data.items():
        kind = _GATEWAY_TYPES.get(str(key))
        if kind is None:
            raise SettingsError(f"{where} has an unknown key {key!r}; known keys: {', '.join(sorted(_GATEWAY_TYPES))}")
        if kind is list:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SettingsError(f"{where}.{key} must be a list of strings, got {value!r}")
            value = tuple(value)
        elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, kind) or isinstance(value, bool):
            raise SettingsError(f"{where}.{key} must be {kind.__name__}, got {value!r}")
        values[str(key)] = value
    spec = GatewaySpec(**values)
    _check_gateway(spec, where)
    return spec


def _check_gateway(spec: GatewaySpec, where: str) -> None:
    _port(spec.port, f"{where}.port")
    if spec.worker_auth not in WORKER_AUTH:
        raise SettingsError(f"{where}.worker_auth must be one of {', '.join(WORKER_AUTH)}, got {spec.worker_auth!r}")
    if spec.rate_limit_rps < 0:
        raise SettingsError(f"{where}.rate_limit_rps must be 0 (off) or positive, got {spec.rate_limit_rps}")
    for name in ("rate_limit_burst", "rate_limit_tpm"):
        value = getattr(spec, name)
        if value is not None and value < 1:
            raise SettingsError(f"{where}.{name} must be at least 1, got {value}")


def _model(entry: Any, where: str) -> FleetModel:
    settings, own = model_entry(entry, where, _FLEET_KEYS)
    if not settings.get("served_model_name"):
        raise SettingsError(f"{where} needs a name (what clients put in `model`)")
    device = own.get("device", "cpu")
    if device not in ("cpu", "gpu"):
        raise SettingsError(f"{where}.device must be cpu or gpu, got {device!r}")
    settings["device"] = "cuda" if device == "gpu" else "cpu"
    model_settings = replace(ModelSettings(), **settings)
    try:
        model_settings.check()
    except SettingsError as exc:
        raise SettingsError(f"{where}: {exc}") from exc
    port = own.get("port", WORKER_PORT)
    _port(port, f"{where}.port")
    return FleetModel(
        settings=model_settings,
        device=device,
        replicas=_replicas(own.get("replicas", 1), f"{where}.replicas"),
        port=port,
        urls=_urls(own.get("urls", []), f"{where}.urls"),
    )


def _replicas(value: Any, where: str) -> Replicas:
    low: Any
    high: Any
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, dict) and set(value) <= {"min", "max"} and "min" in value:
        low, high = value["min"], value.get("max", value["min"])
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
            raise SettingsError(f"{where}.min and .max must be whole numbers, got {value!r}")
    else:
        raise SettingsError(f"{where} must be a number or {{min: N, max: M}}, got {value!r}")
    if low < 1:
        raise SettingsError(f"{where}: min must be at least 1, got {low}")
    if high < low:
        raise SettingsError(f"{where}: max ({high}) must be at least min ({low})")
    return Replicas(low, high)


def _urls(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SettingsError(f"{where} must be a list of URLs, got {value!r}")
    for url in value:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"{where}: {url!r} is not an http(s)://host[:port] URL")
    return tuple(str(url).rstrip("/") for url in value)


def _port(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise SettingsError(f"{where} must be a TCP port (1-65535), got {value!r}")
