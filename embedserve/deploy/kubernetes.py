"""``embedserve deploy kubernetes``: plain manifests and a kustomization for a fleet.

Per generated model: a Deployment (probes, preStop, a grace period longer than the drain, resources, a non-root
read-only container), a Service, a PodDisruptionBudget, a NetworkPolicy (only the gateway reaches the API port, only
Prometheus the metrics port) and, when ``replicas.max > replicas.min``, an HPA on the predicted-wait gauge. The
gateway gets its Deployment, Service and the fleet file as a ConfigMap. The KEDA ScaledObjects (an alternative to the
HPAs, never both) and the prometheus-adapter values are written beside, outside the kustomization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedserve.deploy import monitoring
from embedserve.deploy.autoscaling import hpa, keda_scaled_objects
from embedserve.deploy.common import (
    FLEET_PATH,
    GATEWAY,
    LABEL_PART_OF,
    PRESTOP_SECONDS,
    Options,
    deployed_models,
    dump,
    gateway_fleet,
    labels,
    metrics_port,
    worker_env,
    worker_name,
)
from embedserve.fleet import Fleet, FleetModel

GATEWAY_NAME = "embedserve-gateway"
TOKEN_SECRET = "embedserve-gateway-token"
"""Created by the operator (never generated): ``kubectl create secret generic embedserve-gateway-token
--from-file=token=./token``."""
KEYS_SECRET = "embedserve-api-keys"
SECRETS_DIR = "/run/secrets/embedserve"
UID = 10001
"""Not the images' user (1000): a uid above 10000 cannot collide with a host account. Nothing in the image is written
at run time (the root filesystem is read-only) and the caches live on emptyDirs that ``fsGroup`` makes writable."""
CHECKOV_SKIPS = {
    "CKV_K8S_11": (
        ("Deployment",),
        "no CPU limit on purpose: a CFS quota throttles a compute-bound server below its request in bursts; the CPU "
        "request reserves the cores and memory is limited",
    ),
    "CKV_K8S_43": (
        ("Deployment",),
        "the image is an option (--image-cpu / --image-cuda): pass name@sha256:digest to pin one; no image is built "
        "here, so there is no digest to write",
    ),
    "CKV_K8S_21": (
        ("Deployment", "Service", "ConfigMap"),
        "no namespace on purpose: kubectl apply -k puts every object in the namespace of the kustomization or the "
        "current context",
    ),
}
"""checkov findings that are choices, with why: written as ``checkov.io/skipN`` annotations on the objects they
concern, so that checkov run on the generated files (tests/unit/test_deploy_lint.py) reports them as skipped."""
CPU_RESOURCES = {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
GPU_RESOURCES = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi", "nvidia.com/gpu": 1}}
GATEWAY_RESOURCES = {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
GATEWAY_REPLICAS = 2
"""Stateless, so two for availability through a node drain or a rollout."""
STARTUP_SECONDS = 600
"""How long a worker may take to download, load and warm up before the kubelet gives up and restarts it."""


def generate(path: Path, fleet: Fleet, options: Options) -> dict[str, str]:
    """Every file, by its path under the output folder."""
    files: dict[str, str] = {}
    keys = f"{SECRETS_DIR}/api_keys" if fleet.gateway.api_key_file else None
    fleet_text = gateway_fleet(path, fleet, token_file=f"{SECRETS_DIR}/token", api_key_file=keys)
    files["gateway.yaml"] = dump(*map(_skips, _gateway(fleet, options, fleet_text)))
    for model in deployed_models(fleet):
        files[f"{worker_name(model)}.yaml"] = dump(*map(_skips, _worker_objects(model, options)))
    files["kustomization.yaml"] = dump(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "labels": [{"pairs": {LABEL_PART_OF: "embedserve"}, "includeSelectors": False}],
            "resources": sorted(files),
        }
    )
    scaled = keda_scaled_objects(fleet, options)
    if scaled:
        files["keda/scaledobjects.yaml"] = dump(*scaled)
    files["prometheus-adapter/values.yaml"] = monitoring.adapter_values()
    files["prometheus/prometheus.yml"] = monitoring.kubernetes_prometheus()
    files[f"prometheus/{monitoring.RULES_FILE}"] = monitoring.alert_rules(fleet)
    return files


def _skips(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with its checkov skip annotations (see CHECKOV_SKIPS)."""
    found = [f"{check}={why}" for check, (kinds, why) in CHECKOV_SKIPS.items() if obj["kind"] in kinds]
    if found:
        annotations = obj["metadata"].setdefault("annotations", {})
        annotations.update({f"checkov.io/skip{i}": text for i, text in enumerate(found, 1)})
    return obj


def _meta(name: str, component: str, instance: str) -> dict[str, Any]:
    return {"name": name, "labels": labels(component, instance)}


def _security(read_only: bool = True) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _worker_objects(model: FleetModel, options: Options) -> list[dict[str, Any]]:
    name = worker_name(model)
    objects = [_deployment(model, options), _service(name, "worker", model.port, metrics_port(model))]
    objects.append(_pdb(name, "worker"))
    objects.append(_network_policy(model))
    if model.replicas.max > model.replicas.min:
        objects.append(hpa(model))
    return objects


def _deployment(model: FleetModel, options: Options) -> dict[str, Any]:
    name = worker_name(model)
    env = {
        **worker_env(model, options),
        # The root filesystem is read-only: every cache the server (and torch, ONNX Runtime) writes goes to /data.
        "HF_HOME": "/data/huggingface",
        "EMBEDSERVE_ENGINE_CACHE_DIR": "/data/embedserve-cache",
        "XDG_CACHE_HOME": "/data/cache",
    }
    container = {
        "name": "embedserve",
        "image": options.image(model),
        "imagePullPolicy": "Always",  # a tag may move: the node checks the registry (and pulls only on change)
        "args": ["--gateway-token-file", f"{SECRETS_DIR}/token"],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [
            {"name": "http", "containerPort": model.port},
            {"name": "metrics", "containerPort": metrics_port(model)},
        ],
        # /health is 503 while loading: startup holds the other probes off until the model is loaded and warm.
        "startupProbe": _http_probe(period=10, failures=STARTUP_SECONDS // 10),
        # ... and 503 while draining (and after a backend died): no new traffic, but no restart either.
        "readinessProbe": _http_probe(period=5, failures=2),
        # /health cannot tell alive from draining. /metrics on the API port can: it is open (no key, no gateway
        # token), answers while loading and while draining, and goes through the event loop, so a hung loop fails it;
        # a drain of --graceful-shutdown-timeout is never cut short by a restart.
        "livenessProbe": {
            "httpGet": {"path": "/metrics", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "resources": GPU_RESOURCES if model.device == "gpu" else CPU_RESOURCES,
        "securityContext": _security(),
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "gateway-token", "mountPath": SECRETS_DIR, "readOnly": True},
        ],
    }
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": options.termination_grace_seconds,
        "automountServiceAccountToken": False,  # neither calls the Kubernetes API
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": [
            {"name": "data", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "gateway-token", "secret": {"secretName": TOKEN_SECRET, "defaultMode": 0o440}},
        ],
    }
    strategy: dict[str, Any] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    if model.device == "gpu":
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        # No spare GPU is assumed for a surge pod: replace one worker at a time instead.
        strategy["rollingUpdate"] = {"maxSurge": 0, "maxUnavailable": 1}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, "worker", name),
        "spec": {
            "replicas": model.replicas.min,
            "selector": {"matchLabels": labels("worker", name)},
            "strategy": strategy,
            "template": {"metadata": {"labels": labels("worker", name)}, "spec": pod},
        },
    }


def _http_probe(period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 4,
        "failureThreshold": failures,
    }


def _service(name: str, component: str, port: int, metrics: int | None = None) -> dict[str, Any]:
    ports: list[dict[str, Any]] = [{"name": "http", "port": port, "targetPort": "http"}]
    if metrics is not None:
        ports.append({"name": "metrics", "port": metrics, "targetPort": "metrics"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, component, name),
        "spec": {"selector": labels(component, name), "ports": ports},
    }


def _pdb(name: str, component: str) -> dict[str, Any]:
    # maxUnavailable, not minAvailable: a one-replica model must not block node drains forever.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, component, name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(component, name)}},
    }


def _network_policy(model: FleetModel) -> dict[str, Any]:
    name = worker_name(model)
    gateway = {"podSelector": {"matchLabels": labels(GATEWAY, GATEWAY_NAME)}}
    prometheus = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, "worker", name),
        "spec": {
            "podSelector": {"matchLabels": labels("worker", name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [gateway], "ports": [{"protocol": "TCP", "port": model.port}]},
                {"from": [prometheus], "ports": [{"protocol": "TCP", "port": metrics_port(model)}]},
            ],
        },
    }


def _gateway(fleet: Fleet, options: Options, fleet_text: str) -> list[dict[str, Any]]:
    port = fleet.gateway.port
    secrets: list[dict[str, Any]] = [{"secret": {"name": TOKEN_SECRET, "items": [{"key": "token", "path": "token"}]}}]
    if fleet.gateway.api_key_file:
        secrets.append({"secret": {"name": KEYS_SECRET, "items": [{"key": "keys", "path": "api_keys"}]}})
    container = {
        "name": "gateway",
        "image": options.image_cpu,
        "imagePullPolicy": "Always",  # a tag may move: the node checks the registry (and pulls only on change)
        "args": ["gateway", "--fleet", FLEET_PATH],
        "env": [{"name": "EMBEDSERVE_JSON_OUTPUT", "value": "true"}],
        "ports": [{"name": "http", "containerPort": port}],
        # The gateway loads nothing and holds no state: accepting connections is being ready and alive.
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "resources": GATEWAY_RESOURCES,
        "securityContext": _security(),
        "volumeMounts": [
            {"name": "fleet", "mountPath": str(Path(FLEET_PATH).parent), "readOnly": True},
            {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod = {
        "terminationGracePeriodSeconds": options.termination_grace_seconds,
        "automountServiceAccountToken": False,  # neither calls the Kubernetes API
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": [
            {"name": "fleet", "configMap": {"name": GATEWAY_NAME}},
            {"name": "secrets", "projected": {"sources": secrets, "defaultMode": 0o440}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(GATEWAY_NAME, GATEWAY, GATEWAY_NAME),
            "data": {Path(FLEET_PATH).name: fleet_text},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(GATEWAY_NAME, GATEWAY, GATEWAY_NAME),
            "spec": {
                "replicas": GATEWAY_REPLICAS,
                "selector": {"matchLabels": labels(GATEWAY, GATEWAY_NAME)},
                "template": {"metadata": {"labels": labels(GATEWAY, GATEWAY_NAME)}, "spec": pod},
            },
        },
        _service(GATEWAY_NAME, GATEWAY, port),
        _pdb(GATEWAY_NAME, GATEWAY),
        # The public edge: any source may connect, to its API port only.
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(GATEWAY_NAME, GATEWAY, GATEWAY_NAME),
            "spec": {
                "podSelector": {"matchLabels": labels(GATEWAY, GATEWAY_NAME)},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": port}]}],
            },
        },
    ]
