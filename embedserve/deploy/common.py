"""What the deployment targets share: resource names, a worker's environment, the gateway's copy of the fleet file,
and deterministic YAML.

Nothing here starts a server: the generated files are text, written the same way for the same fleet file, so they can
be committed and diffed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from embedserve.fleet import Fleet, FleetModel
from embedserve.options import SettingsError, env_names
from embedserve.settings import ModelSettings

METRICS_PORT = 9000
"""Workers also serve /metrics here (``--prometheus-port``), so Prometheus never needs the API port."""
PRESTOP_SECONDS = 5
"""Sleep before SIGTERM: endpoint lists (kube-proxy, the gateway's view) drop the pod before the drain starts."""
GRACE_MARGIN_SECONDS = 10
"""Slack past preStop + drain for the process to close and exit before the kubelet's SIGKILL."""
FLEET_PATH = "/etc/embedserve/fleet.yaml"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_INSTANCE = "app.kubernetes.io/instance"
GATEWAY = "gateway"
WORKERS_JOB = "embedserve-workers"
GATEWAY_JOB = "embedserve-gateway"

_NOT_A_LABEL = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class Options:
    """What the ``deploy`` command was asked for, besides the fleet itself."""

    source_name: str = "fleet.yaml"
    """The fleet file's name (not its path, so that output does not depend on where it was run)."""
    image_cpu: str = "embedserve:cpu"
    image_cuda: str = "embedserve:cuda"
    graceful_shutdown_timeout: float = 30.0
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    """Where KEDA queries Prometheus (Kubernetes only)."""

    def image(self, model: FleetModel) -> str:
        """The image a model's workers run: the CUDA one for ``device: gpu``."""
        return self.image_cuda if model.device == "gpu" else self.image_cpu

    @property
    def termination_grace_seconds(self) -> int:
        """Longer than preStop plus the drain, so a draining worker is never killed mid-answer."""
        return PRESTOP_SECONDS + math.ceil(self.graceful_shutdown_timeout) + GRACE_MARGIN_SECONDS


def labels(component: str, instance: str) -> dict[str, str]:
    """The labels every Kubernetes object and pod carries; Services, PDBs, NetworkPolicies, HPAs and Prometheus
    select on them."""
    return {LABEL_PART_OF: "embedserve", LABEL_COMPONENT: component, LABEL_INSTANCE: instance}


def worker_name(model: FleetModel) -> str:
    """The Compose service / Kubernetes object name of a model's workers: a DNS label from its served name."""
    label = _NOT_A_LABEL.sub("-", model.name.lower()).strip("-")[:48].strip("-")
    return f"worker-{label or 'model'}"


def deployed_models(fleet: Fleet) -> tuple[FleetModel, ...]:
    """The models whose workers are generated: a model with ``urls`` runs elsewhere and is only routed to."""
    models = tuple(m for m in fleet.models if not m.urls)
    names = [worker_name(m) for m in models]
    for i, name in enumerate(names):
        if name in names[:i]:
            clash = [m.name for m in models if worker_name(m) == name]
            raise SettingsError(f"models {clash[0]!r} and {clash[1]!r} both become {name!r}; rename one of them")
    for model in models:
        if model.settings.prompts:
            raise SettingsError(
                f"model {model.name!r}: `prompts` cannot be passed as an environment variable; list them in the "
                "model's sentence-transformers config, or run this model outside the generated files (give it urls)"
            )
    return models


def metrics_port(model: FleetModel) -> int:
    """The worker's metrics port, never its API port."""
    return METRICS_PORT if model.port != METRICS_PORT else METRICS_PORT + 1


def worker_url(model: FleetModel) -> str:
    """Where the gateway reaches a generated model's workers (the Compose service or Kubernetes Service)."""
    return f"http://{worker_name(model)}:{model.port}"


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def worker_env(model: FleetModel, options: Options) -> dict[str, str]:
    """The worker's settings as the EMBEDSERVE_* variables the CLI reads: the model's identity and every setting the
    fleet file changed from its default, then where it listens, its metrics port, its drain and no rate limit."""
    defaults = ModelSettings()
    env: dict[str, str] = {}
    for f in fields(ModelSettings):
        value = getattr(model.settings, f.name)
        if not f.metadata.get("cli", True) or value is None:
            continue
        if f.name in ("model_id", "served_model_name", "device") or value != getattr(defaults, f.name):
            env[env_names(f.name, f.metadata)[0]] = _env_value(value)
    env["EMBEDSERVE_HOSTNAME"] = "0.0.0.0"
    env["EMBEDSERVE_PORT"] = str(model.port)
    env["EMBEDSERVE_PROMETHEUS_PORT"] = str(metrics_port(model))
    env["EMBEDSERVE_GRACEFUL_SHUTDOWN_TIMEOUT"] = _env_value(options.graceful_shutdown_timeout)
    env["EMBEDSERVE_JSON_OUTPUT"] = "true"
    # Every request reaches a worker from the gateway's address, which holds the per-key governors: a per-client
    # limit here would throttle the whole fleet as one client.
    env["EMBEDSERVE_RATE_LIMIT_RPS"] = "0"
    return env


def gateway_fleet(path: Path, fleet: Fleet, *, token_file: str, api_key_file: str | None) -> str:
    """The fleet file as the gateway reads it inside the deployment: the same entries, with each generated model's
    ``urls`` set to its service and the gateway's secret files moved to where the deployment mounts them."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    gateway = dict(data.get("gateway") or {})
    gateway["token_file"] = token_file
    if api_key_file is not None:
        gateway["api_key_file"] = api_key_file
    data["gateway"] = gateway
    generated = {m.name for m in deployed_models(fleet)}
    for entry, model in zip(data["models"], fleet.models, strict=True):
        if model.name in generated:
            entry["urls"] = [worker_url(model)]
    return dump(data)


def dump(*documents: Any) -> str:
    """YAML with keys in the order written (never sorted away from it, never dependent on a dict's history)."""
    return "---\n".join(
        yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)
        for doc in documents
    )


def header(options: Options) -> str:
    """The first lines of every generated YAML file."""
    return f"# Generated by `embedserve deploy` from {options.source_name}. Edit the fleet file and regenerate.\n"
