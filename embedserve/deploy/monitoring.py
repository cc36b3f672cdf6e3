"""Prometheus and Grafana for a fleet: scrape configs (Compose by DNS, Kubernetes by pod discovery), alert rules,
Grafana provisioning, and the prometheus-adapter rule that turns the worker gauge into a Kubernetes pods metric.

Every expression names metrics the server defines in :class:`embedserve.metrics.Metrics` (the tests check it).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from embedserve.deploy.common import (
    GATEWAY_JOB,
    LABEL_COMPONENT,
    LABEL_PART_OF,
    WORKERS_JOB,
    deployed_models,
    dump,
    metrics_port,
    worker_name,
)
from embedserve.fleet import Fleet, FleetModel

SCALE_METRIC = "embedserve_predicted_wait_seconds"
"""The autoscaling signal: a gauge (what a request arriving now would wait), never a counter's raw value."""
REQUESTS = "embedserve_requests_total"
RULES_FILE = "alerts.yml"
SCRAPE_INTERVAL = "15s"
EXTERNAL_JOB = "embedserve-external-workers"
"""Workers of models with ``urls``: run elsewhere, scraped at those URLs."""
DEFAULT_WAIT_LIMIT = 1.0
"""The limit assumed for a model that turned the predicted-wait admission off (``max_queue_time: 0``)."""


def wait_limit(model: FleetModel) -> float:
    """The predicted wait past which the model refuses work (its ``max_queue_time``)."""
    return model.settings.max_queue_time or DEFAULT_WAIT_LIMIT


def scale_target(model: FleetModel) -> float:
    """The average predicted wait per worker the autoscalers hold: half the limit, so capacity is added before
    requests start getting 429."""
    return round(wait_limit(model) / 2, 3)


def compose_prometheus(fleet: Fleet) -> str:
    """prometheus.yml for Compose: the gateway, and every replica of every worker through Docker's DNS."""
    workers: list[dict[str, Any]] = [
        {"names": [worker_name(m)], "type": "A", "port": metrics_port(m)} for m in deployed_models(fleet)
    ]
    jobs: list[dict[str, Any]] = [
        {"job_name": GATEWAY_JOB, "static_configs": [{"targets": [f"gateway:{fleet.gateway.port}"]}]},
    ]
    if workers:
        jobs.append({"job_name": WORKERS_JOB, "dns_sd_configs": workers})
    external = [t for m in fleet.models for t in _hosts(m.urls)]
    if external:
        jobs.append({"job_name": EXTERNAL_JOB, "static_configs": [{"targets": external}]})
    return _prometheus(jobs)


def kubernetes_prometheus() -> str:
    """prometheus.yml for a Prometheus inside the cluster: pods found by their labels, with the ``namespace`` and
    ``pod`` labels that prometheus-adapter maps back to Kubernetes objects."""
    jobs = [_pod_job(GATEWAY_JOB, "gateway", "http"), _pod_job(WORKERS_JOB, "worker", "metrics")]
    return _prometheus(jobs)


def _pod_job(name: str, component: str, port: str) -> dict[str, Any]:
    def label(key: str) -> str:
        return "__meta_kubernetes_pod_label_" + key.replace(".", "_").replace("/", "_").replace("-", "_")

    return {
        "job_name": name,
        "kubernetes_sd_configs": [{"role": "pod"}],
        "relabel_configs": [
            {"source_labels": [label(LABEL_PART_OF)], "regex": "embedserve", "action": "keep"},
            {"source_labels": [label(LABEL_COMPONENT)], "regex": component, "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port, "action": "keep"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }


def _prometheus(jobs: list[dict[str, Any]]) -> str:
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [RULES_FILE],  # relative to this file: both sit in one folder
        "scrape_configs": jobs,
    }
    return dump(config)


def _hosts(urls: tuple[str, ...]) -> list[str]:
    hosts = []
    for url in urls:
        parts = urlsplit(url)
        hosts.append(f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}")
    return hosts


def alert_rules(fleet: Fleet) -> str:
    """Alerts on what a fleet's operator acts on: a worker or the gateway down, errors, sustained refusals, and a
    predicted wait over the model's limit (more workers are needed than the autoscaler may add)."""
    workers = f'job=~"{WORKERS_JOB}|{EXTERNAL_JOB}"'

    def ratio(status: str) -> str:
        return (
            f'sum by (model) (rate({REQUESTS}{{{workers},status=~"{status}"}}[5m]))\n'
            f"  / sum by (model) (rate({REQUESTS}{{{workers}}}[5m]))"
        )

    rules: list[dict[str, Any]] = [
        _alert(
            "EmbedserveWorkerDown", f"up{{{workers}}} == 0", "2m", "critical",
            "Worker {{ $labels.instance }} is down",
            "Prometheus could not scrape it for 2 minutes; its model has fewer workers (none, if it was the last).",
        ),
        _alert(
            "EmbedserveGatewayDown", f'up{{job="{GATEWAY_JOB}"}} == 0', "2m", "critical",
            "Gateway {{ $labels.instance }} is down", "Clients of every model go through it.",
        ),
        _alert(
            "EmbedserveHigh5xxRatio", ratio("5..") + " > 0.05", "5m", "critical",
            "{{ $labels.model }}: {{ $value | humanizePercentage }} of requests answered 5xx",
            "500 means inference failed (details in the worker's log); 503 means loading, draining or a dead backend.",
        ),
        _alert(
            "EmbedserveSustained429Ratio", ratio("429") + " > 0.1", "15m", "warning",
            "{{ $labels.model }}: {{ $value | humanizePercentage }} of requests refused with 429 for 15 minutes",
            "Admission is refusing work: add workers (raise replicas.max) or raise max_queue_time.",
        ),
    ]  # fmt: skip
    for model in deployed_models(fleet):
        limit = wait_limit(model)
        rules.append(
            _alert(
                "EmbedservePredictedWaitOverLimit",
                f'max({SCALE_METRIC}{{model="{model.name}"}}) > {limit}',
                "5m",
                "warning",
                f"{model.name}: predicted wait {{{{ $value | humanizeDuration }}}} over its limit of {limit} s",
                "Requests over the limit get 429 at once; the autoscaler is at its maximum or cannot add workers.",
                model=model.name,
            )
        )
    return dump({"groups": [{"name": "embedserve", "rules": rules}]})


def _alert(
    name: str, expr: str, wait: str, severity: str, summary: str, description: str, model: str | None = None
) -> dict[str, Any]:
    labels = {"severity": severity, **({"model": model} if model is not None else {})}
    return {
        "alert": name,
        "expr": expr,
        "for": wait,
        "labels": labels,
        "annotations": {"summary": summary, "description": description},
    }


def grafana_datasource() -> str:
    """Grafana's Prometheus data source (the dashboard's ``datasource`` variable picks the default one)."""
    source = {
        "name": "Prometheus",
        "type": "prometheus",
        "uid": "prometheus",
        "access": "proxy",
        "url": "http://prometheus:9090",
        "isDefault": True,
        "editable": False,
    }
    return dump({"apiVersion": 1, "datasources": [source]})


def grafana_dashboards(folder: str) -> str:
    """Grafana's dashboard provider: load every JSON dashboard under ``folder``."""
    provider = {
        "name": "embedserve",
        "type": "file",
        "disableDeletion": True,
        "allowUiUpdates": False,
        "options": {"path": folder},
    }
    return dump({"apiVersion": 1, "providers": [provider]})


def adapter_values() -> str:
    """Values for the prometheus-community/prometheus-adapter chart: the worker gauge as a pods metric of the same
    name, averaged by the HPA over the pods of one Deployment."""
    rule = {
        "seriesQuery": f'{SCALE_METRIC}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{SCALE_METRIC}$", "as": SCALE_METRIC},
        # A worker serves one model, so one series per pod; max keeps it one if a scrape ever overlaps.
        "metricsQuery": "max by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})",
    }
    return dump({"rules": {"default": False, "custom": [rule]}})
