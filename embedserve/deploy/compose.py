"""``embedserve deploy compose``: one Compose project for a fleet.

The gateway is the only service with a public port. Each generated model is one service with ``replicas.min``
replicas (Compose does not autoscale; ``docker compose up --scale`` changes it by hand), its settings as EMBEDSERVE_*
variables, a /health check, and a GPU reservation for ``device: gpu``. Workers accept only requests carrying the
gateway token, shared through a Compose secret. Prometheus scrapes everything and evaluates the alert rules; Grafana
shows the embedserve dashboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedserve.deploy import monitoring
from embedserve.deploy.common import (
    FLEET_PATH,
    Options,
    deployed_models,
    dump,
    gateway_fleet,
    metrics_port,
    worker_env,
    worker_name,
)
from embedserve.fleet import Fleet, FleetModel

TOKEN_SECRET = "gateway_token"
KEYS_SECRET = "api_keys"
PROMETHEUS_IMAGE = "prom/prometheus:v2.53.3"
GRAFANA_IMAGE = "grafana/grafana:11.4.0"
GRAFANA_PORT = 3001
"""Grafana's published port (3000 is the workers' default inside the project; published, it would only confuse)."""
DASHBOARDS = "/var/lib/grafana/dashboards"

_HEALTH_CHECK = (
    "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['EMBEDSERVE_PORT'] + "
    "'/health', timeout=4)"
)


def generate(path: Path, fleet: Fleet, options: Options, dashboard: str) -> dict[str, str]:
    """Every file of the Compose project, by its path under the output folder."""
    keys = f"/run/secrets/{KEYS_SECRET}" if fleet.gateway.api_key_file else None
    return {
        "compose.yaml": dump(_project(fleet, options)),
        "gateway-fleet.yaml": gateway_fleet(path, fleet, token_file=f"/run/secrets/{TOKEN_SECRET}", api_key_file=keys),
        "prometheus/prometheus.yml": monitoring.compose_prometheus(fleet),
        f"prometheus/{monitoring.RULES_FILE}": monitoring.alert_rules(fleet),
        "grafana/provisioning/datasources/prometheus.yaml": monitoring.grafana_datasource(),
        "grafana/provisioning/dashboards/embedserve.yaml": monitoring.grafana_dashboards(DASHBOARDS),
        "grafana/dashboards/embedserve.json": dashboard,
    }


def _project(fleet: Fleet, options: Options) -> dict[str, Any]:
    services: dict[str, Any] = {"gateway": _gateway(fleet, options)}
    for model in deployed_models(fleet):
        services[worker_name(model)] = _worker(model, options)
    services["prometheus"] = {
        "image": PROMETHEUS_IMAGE,
        "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"],
        "volumes": [
            "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
            f"./prometheus/{monitoring.RULES_FILE}:/etc/prometheus/{monitoring.RULES_FILE}:ro",
            "prometheus-data:/prometheus",
        ],
        "restart": "unless-stopped",
    }
    services["grafana"] = {
        "image": GRAFANA_IMAGE,
        "ports": [f"{GRAFANA_PORT}:3000"],
        "volumes": [
            "./grafana/provisioning:/etc/grafana/provisioning:ro",
            f"./grafana/dashboards:{DASHBOARDS}:ro",
            "grafana-data:/var/lib/grafana",
        ],
        "depends_on": ["prometheus"],
        "restart": "unless-stopped",
    }
    secrets: dict[str, Any] = {TOKEN_SECRET: {"file": f"./secrets/{TOKEN_SECRET}"}}
    if fleet.gateway.api_key_file:
        secrets[KEYS_SECRET] = {"file": f"./secrets/{KEYS_SECRET}"}
    return {
        "name": "embedserve",
        "services": services,
        "configs": {"fleet": {"file": "./gateway-fleet.yaml"}},
        "secrets": secrets,
        "volumes": {"prometheus-data": {}, "grafana-data": {}},
    }


def _gateway(fleet: Fleet, options: Options) -> dict[str, Any]:
    port = fleet.gateway.port
    return {
        "image": options.image_cpu,
        "command": ["gateway", "--fleet", FLEET_PATH],
        "ports": [f"{port}:{port}"],
        "configs": [{"source": "fleet", "target": FLEET_PATH}],
        "secrets": [TOKEN_SECRET, *([KEYS_SECRET] if fleet.gateway.api_key_file else [])],
        "environment": {"EMBEDSERVE_JSON_OUTPUT": "true"},
        # The gateway holds no state and loads nothing: listening is being healthy.
        "healthcheck": {
            "test": ["CMD", "python", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 4)"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
        },
        "stop_grace_period": f"{options.termination_grace_seconds}s",
        "restart": "unless-stopped",
    }


def _worker(model: FleetModel, options: Options) -> dict[str, Any]:
    deploy: dict[str, Any] = {"replicas": model.replicas.min}
    if model.device == "gpu":
        deploy["resources"] = {"reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}
    return {
        "image": options.image(model),
        "command": ["--gateway-token-file", f"/run/secrets/{TOKEN_SECRET}"],
        "environment": worker_env(model, options),
        "secrets": [TOKEN_SECRET],
        # No published port: only services of this project (the gateway, Prometheus) reach a worker.
        "expose": [str(model.port), str(metrics_port(model))],
        "healthcheck": {
            "test": ["CMD", "python", "-c", _HEALTH_CHECK],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            # Loading (and a first download) answers 503; that must not count as failing.
            "start_period": "300s",
        },
        "stop_grace_period": f"{options.termination_grace_seconds}s",
        "deploy": deploy,
        "restart": "unless-stopped",
    }
