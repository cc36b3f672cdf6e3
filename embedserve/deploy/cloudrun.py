"""Terraform for Google Cloud Run from a fleet file: the gateway as the one public service, each generated model a
private service that only the gateway may call.

* Network: workers take internal traffic only (``INGRESS_TRAFFIC_INTERNAL_ONLY``); the gateway reaches them through
  its VPC (Direct VPC egress, all traffic, on a subnet with Private Google Access), which is what makes its calls
  internal.
* Identity: workers also require IAM; the gateway's service account holds ``roles/run.invoker`` on each worker
  service, and the gateway sends a Google ID token for the worker's URL with every call (``worker_auth:
  google-id-token`` in its copy of the fleet file, :mod:`embedserve.gateway.identity`). The shared gateway token
  stays as a second lock. The gateway itself is public (``allUsers`` may invoke it) and checks the API keys.
* Secrets: the gateway token and the API keys file live in Secret Manager, created by the operator (never in the
  Terraform state); the services read them as an environment variable and a mounted file. The gateway's copy of
  the fleet file, which holds the workers' URLs, is a secret version Terraform writes.
* GPU models get an attached GPU (``node_selector { accelerator }`` and an ``nvidia.com/gpu`` limit), with the
  CPU always allocated, as Cloud Run requires for GPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from embedserve.deploy.common import Options, deployed_models, worker_env, worker_name
from embedserve.deploy.hcl import Block, Comment, Raw, document, value
from embedserve.fleet import Fleet, FleetModel
from embedserve.options import SettingsError

PROVIDER_VERSION = ">= 6.30"
"""GPU fields of google_cloud_run_v2_service are GA from the 6.x provider."""
GATEWAY_SERVICE = "embedserve-gateway"
FLEET_DIR = "/etc/embedserve/fleet"
KEYS_DIR = "/run/secrets/embedserve-keys"
WORKER_CONCURRENCY = 256
"""Requests one worker instance takes at once: enough to fill its batches; past its queue it answers 429 itself."""
GATEWAY_CONCURRENCY = 1000
"""Cloud Run's maximum: the gateway only forwards."""
STARTUP_PERIOD = 10
STARTUP_FAILURES = 60
"""10 s x 60: ten minutes to download, load and warm up (Cloud Run allows up to 600 s, 1800 s with a GPU)."""
CPU_LIMITS = {"cpu": "2", "memory": "4Gi"}
GPU_LIMITS = {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
"""An L4 needs at least 4 CPUs and 16 GiB on Cloud Run."""
GATEWAY_LIMITS = {"cpu": "1", "memory": "512Mi"}
DRAIN_SECONDS = 8
"""Cloud Run sends SIGKILL 10 s after SIGTERM, so a worker's drain is capped below that."""


def service_name(model: FleetModel) -> str:
    """The Cloud Run service of a model's workers (at most 49 characters, as Cloud Run requires)."""
    return f"embedserve-{worker_name(model)}"[:49].rstrip("-")


def resource_name(model: FleetModel) -> str:
    """The Terraform resource label of a model's service."""
    return worker_name(model).replace("-", "_")


def generate(path: Path, fleet: Fleet, options: Options) -> dict[str, str]:
    """Every ``.tf`` file, by its name under the output folder."""
    models = deployed_models(fleet)
    names = [service_name(m) for m in models]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SettingsError(f"two models become the Cloud Run service {name!r}; shorten one model's name")
    keys = fleet.gateway.api_key_file is not None
    return {
        "versions.tf": document(_versions()),
        "variables.tf": document(_variables(options, keys)),
        "iam.tf": document(_iam(models, keys)),
        "workers.tf": document([_worker(m, options) for m in models]),
        "gateway.tf": document(_gateway(path, fleet, models, keys)),
        "outputs.tf": document(_outputs(models)),
    }


def _versions() -> list[Block | Comment]:
    google = {"source": "hashicorp/google", "version": PROVIDER_VERSION}
    return [
        Block("terraform", (), [("required_version", ">= 1.5"), Block("required_providers", (), [("google", google)])]),
        Block("provider", ("google",), [("project", Raw("var.project")), ("region", Raw("var.region"))]),
    ]


def _variable(name: str, description: str, default: Any = None, kind: str = "string") -> Block:
    body: list[Any] = [("description", description), ("type", Raw(kind))]
    if default is not None:
        body.append(("default", default))
    return Block("variable", (name,), body)


def _variables(options: Options, keys: bool) -> list[Block | Comment]:
    found: list[Block | Comment] = [
        _variable("project", "Google Cloud project to deploy into."),
        _variable("region", "Cloud Run region (GPU models need one with GPUs, e.g. us-central1).", "us-central1"),
        _variable("image_cpu", "Image of the gateway and of CPU workers (Artifact Registry).", options.image_cpu),
        _variable("image_cuda", "Image of GPU workers (Artifact Registry).", options.image_cuda),
        _variable("gpu_type", "Accelerator attached to each GPU worker instance.", "nvidia-l4"),
        _variable(
            "network", "VPC network of the gateway's Direct VPC egress, through which it reaches the internal workers."
        ),
        _variable("subnetwork", "Subnet of that egress; it must have Private Google Access on."),
        _variable("gateway_max_instances", "Most gateway instances.", 10, "number"),
        _variable(
            "gateway_token_secret",
            "Secret Manager secret holding the gateway token (create it before applying).",
            "embedserve-gateway-token",
        ),
    ]
    if keys:
        found.append(
            _variable(
                "api_keys_secret",
                "Secret Manager secret holding the API keys file (create it before applying).",
                "embedserve-api-keys",
            )
        )
    return found


def _invoker(label: str, service: str, member: str | Raw, comment: Comment | None = None) -> Block:
    body: list[Any] = [comment] if comment else []
    body += [
        ("project", Raw(f"{service}.project")),
        ("location", Raw(f"{service}.location")),
        ("name", Raw(f"{service}.name")),
        ("role", "roles/run.invoker"),
        ("member", member),
    ]
    return Block("resource", ("google_cloud_run_v2_service_iam_member", label), body)


def _secret_access(label: str, secret: Raw, account: str) -> Block:
    return Block(
        "resource",
        ("google_secret_manager_secret_iam_member", label),
        [
            ("secret_id", secret),
            ("role", "roles/secretmanager.secretAccessor"),
            ("member", Raw(f'"serviceAccount:${{google_service_account.{account}.email}}"')),
        ],
    )


def _iam(models: tuple[FleetModel, ...], keys: bool) -> list[Block | Comment]:
    found: list[Block | Comment] = [
        Block(
            "resource",
            ("google_service_account", "gateway"),
            [("account_id", "embedserve-gateway"), ("display_name", "embedserve gateway")],
        ),
        Block(
            "resource",
            ("google_service_account", "worker"),
            [("account_id", "embedserve-worker"), ("display_name", "embedserve workers")],
        ),
        _secret_access("gateway_token_gateway", Raw("var.gateway_token_secret"), "gateway"),
        _secret_access("gateway_token_worker", Raw("var.gateway_token_secret"), "worker"),
        _secret_access("gateway_fleet", Raw("google_secret_manager_secret.gateway_fleet.secret_id"), "gateway"),
    ]
    if keys:
        found.append(_secret_access("api_keys_gateway", Raw("var.api_keys_secret"), "gateway"))
    gateway_member = Raw('"serviceAccount:${google_service_account.gateway.email}"')
    for model in models:
        label = resource_name(model)
        found.append(_invoker(f"{label}_gateway", f"google_cloud_run_v2_service.{label}", gateway_member))
    return found


def _env(name: str, text: str) -> Block:
    return Block("env", (), [("name", name), ("value", text)])


def _secret_env(name: str, secret: Raw) -> Block:
    ref = Block("secret_key_ref", (), [("secret", secret), ("version", "latest")])
    return Block("env", (), [("name", name), Block("value_source", (), [ref])])


def _probe(kind: str, port: int, path: str | None, period: int, failures: int) -> Block:
    action = (
        Block("http_get", (), [("path", path), ("port", port)]) if path else Block("tcp_socket", (), [("port", port)])
    )
    return Block(
        kind, (), [("period_seconds", period), ("timeout_seconds", 5), ("failure_threshold", failures), action]
    )


def _worker(model: FleetModel, options: Options) -> Block:
    env = worker_env(model, options)
    # Cloud Run routes one port to an instance: /metrics stays on the API port (open without the gateway token).
    env.pop("EMBEDSERVE_PROMETHEUS_PORT", None)
    drain = min(options.graceful_shutdown_timeout, DRAIN_SECONDS)
    env["EMBEDSERVE_GRACEFUL_SHUTDOWN_TIMEOUT"] = f"{drain:g}"
    gpu = model.device == "gpu"
    resources = Block("resources", (), [("limits", GPU_LIMITS if gpu else CPU_LIMITS), ("cpu_idle", not gpu),
                                        ("startup_cpu_boost", True)])  # fmt: skip
    container = Block(
        "containers",
        (),
        [
            ("image", Raw("var.image_cuda" if gpu else "var.image_cpu")),
            Block("ports", (), [("container_port", model.port)]),
            *(_env(name, text) for name, text in env.items()),
            _secret_env("EMBEDSERVE_GATEWAY_TOKEN", Raw("var.gateway_token_secret")),
            resources,
            # /health: 503 while loading; /metrics: answers while loading and draining, so liveness never cuts a
            # drain short (the same split as the Kubernetes probes).
            _probe("startup_probe", model.port, "/health", STARTUP_PERIOD, STARTUP_FAILURES),
            _probe("liveness_probe", model.port, "/metrics", 10, 3),
        ],
    )
    template: list[Any] = [
        ("service_account", Raw("google_service_account.worker.email")),
        ("max_instance_request_concurrency", WORKER_CONCURRENCY),
        ("timeout", "300s"),
        Block(
            "scaling",
            (),
            [("min_instance_count", model.replicas.min), ("max_instance_count", model.replicas.max)],
        ),
    ]
    if gpu:
        template.append(Block("node_selector", (), [("accelerator", Raw("var.gpu_type"))]))
    template.append(container)
    label = resource_name(model)
    return Block(
        "resource",
        ("google_cloud_run_v2_service", label),
        [
            ("name", service_name(model)),
            ("location", Raw("var.region")),
            ("ingress", "INGRESS_TRAFFIC_INTERNAL_ONLY"),
            Block("template", (), template),
            ("depends_on", [Raw("google_secret_manager_secret_iam_member.gateway_token_worker")]),
        ],
    )


def _gateway_fleet(path: Path, fleet: Fleet, models: tuple[FleetModel, ...], keys: bool) -> dict[str, Any]:
    """The fleet file as the gateway reads it on Cloud Run: workers at their service URLs (known once Terraform has
    created them), ID tokens on, the token from the environment, the keys file where its secret is mounted."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    gateway = dict(data.get("gateway") or {})
    gateway.pop("token_file", None)  # EMBEDSERVE_GATEWAY_TOKEN, from Secret Manager
    gateway["hostname"] = "0.0.0.0"
    gateway["worker_auth"] = "google-id-token"
    if keys:
        gateway["api_key_file"] = f"{KEYS_DIR}/api_keys"
    generated = {m.name: m for m in models}
    entries = []
    for entry, model in zip(data["models"], fleet.models, strict=True):
        entry = dict(entry)
        if model.name in generated:
            entry["urls"] = [Raw(f"google_cloud_run_v2_service.{resource_name(model)}.uri")]
        entries.append(entry)
    return {"gateway": gateway, "models": entries}


def _gateway(path: Path, fleet: Fleet, models: tuple[FleetModel, ...], keys: bool) -> list[Block | Comment]:
    port = fleet.gateway.port
    config = _gateway_fleet(path, fleet, models, keys)
    mounts = [Block("volume_mounts", (), [("name", "fleet"), ("mount_path", FLEET_DIR)])]
    volumes = [_secret_volume("fleet", Raw("google_secret_manager_secret.gateway_fleet.secret_id"), "fleet.yaml")]
    if keys:
        mounts.append(Block("volume_mounts", (), [("name", "api-keys"), ("mount_path", KEYS_DIR)]))
        volumes.append(_secret_volume("api-keys", Raw("var.api_keys_secret"), "api_keys"))
    container = Block(
        "containers",
        (),
        [
            ("image", Raw("var.image_cpu")),
            ("args", ["gateway", "--fleet", f"{FLEET_DIR}/fleet.yaml", "--json-output"]),
            Block("ports", (), [("container_port", port)]),
            _secret_env("EMBEDSERVE_GATEWAY_TOKEN", Raw("var.gateway_token_secret")),
            Block("resources", (), [("limits", GATEWAY_LIMITS)]),
            # The gateway loads nothing: accepting connections is being started and alive (its /health is 503
            # while any one model has no live worker, which must not restart it).
            _probe("startup_probe", port, None, 2, 15),
            _probe("liveness_probe", port, None, 10, 3),
            *mounts,
        ],
    )
    egress = Block(
        "vpc_access",
        (),
        [
            Block("network_interfaces", (), [("network", Raw("var.network")), ("subnetwork", Raw("var.subnetwork"))]),
            ("egress", "ALL_TRAFFIC"),
        ],
    )
    template = Block(
        "template",
        (),
        [
            ("service_account", Raw("google_service_account.gateway.email")),
            ("max_instance_request_concurrency", GATEWAY_CONCURRENCY),
            ("timeout", "300s"),
            Block("scaling", (), [("min_instance_count", 1), ("max_instance_count", Raw("var.gateway_max_instances"))]),
            egress,
            container,
            *volumes,
        ],
    )
    waits = [Raw("google_secret_manager_secret_version.gateway_fleet"),
             Raw("google_secret_manager_secret_iam_member.gateway_token_gateway"),
             Raw("google_secret_manager_secret_iam_member.gateway_fleet")]  # fmt: skip
    if keys:
        waits.append(Raw("google_secret_manager_secret_iam_member.api_keys_gateway"))
    return [
        Block(
            "resource",
            ("google_secret_manager_secret", "gateway_fleet"),
            [("secret_id", "embedserve-gateway-fleet"), Block("replication", (), [Block("auto", (), [])])],
        ),
        Block(
            "resource",
            ("google_secret_manager_secret_version", "gateway_fleet"),
            [
                ("secret", Raw("google_secret_manager_secret.gateway_fleet.id")),
                ("secret_data", Raw(f"jsonencode({value(config, 1)})")),
            ],
        ),
        Block(
            "resource",
            ("google_cloud_run_v2_service", "gateway"),
            [
                ("name", GATEWAY_SERVICE),
                ("location", Raw("var.region")),
                ("ingress", "INGRESS_TRAFFIC_ALL"),
                template,
                ("depends_on", waits),
            ],
        ),
        _invoker(
            "gateway_public",
            "google_cloud_run_v2_service.gateway",
            "allUsers",
            Comment("Public on purpose: the gateway is the fleet's edge and checks the API keys itself."),
        ),
    ]


def _secret_volume(name: str, secret: Raw, file: str) -> Block:
    item = Block("items", (), [("version", "latest"), ("path", file)])
    return Block("volumes", (), [("name", name), Block("secret", (), [("secret", secret), item])])


def _outputs(models: tuple[FleetModel, ...]) -> list[Block | Comment]:
    urls = {m.name: Raw(f"google_cloud_run_v2_service.{resource_name(m)}.uri") for m in models}
    return [
        Block("output", ("gateway_url",), [("value", Raw("google_cloud_run_v2_service.gateway.uri"))]),
        Block("output", ("worker_urls",), [("value", urls)]),
    ]
