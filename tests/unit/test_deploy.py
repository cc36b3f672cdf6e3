"""`embedserve deploy`: Compose and Kubernetes files from one fleet file, parsed back and checked for what matters
(probes, drain, GPUs, network reach, autoscaling on a gauge the server exposes), validated against the Kubernetes
schemas, and the Prometheus files checked with promtool where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from embedserve import cli
from embedserve.deploy import DASHBOARD, main
from embedserve.deploy.common import PRESTOP_SECONDS
from embedserve.fleet import load_fleet
from embedserve.metrics import Metrics
from tests.unit.test_dashboard import exposed

pytestmark = pytest.mark.unit

FLEET = """
gateway:
  port: 8080
  api_key_file: /etc/embedserve/keys
models:
  - name: minilm
    model_id: sentence-transformers/all-MiniLM-L6-v2
    replicas: {min: 2, max: 4}
    max_batch_tokens: 8192
    max_queue_time: 0.5
    auto_truncate: false
    max_batch_requests: 16
  - name: BGE/Reranker
    model_id: BAAI/bge-reranker-base
    device: gpu
  - name: remote
    model_id: org/elsewhere
    urls: [http://10.0.0.7:3000]
"""
KUBERNETES_VERSION = "1.37.0"
METRIC = re.compile(r"embedserve_[a-z_]+")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)"
)


_OUTPUTS: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _generate(tmp_path_factory: pytest.TempPathFactory):
    """The files `embedserve deploy <target>` writes for FLEET, once per target for the whole module."""
    root = tmp_path_factory.mktemp("deploy")
    (root / "fleet.yaml").write_text(FLEET)
    for target in ("compose", "kubernetes"):
        assert main([target, "--fleet", str(root / "fleet.yaml"), "--out", str(root / target)]) == 0
        _OUTPUTS[target] = root / target
    yield
    _OUTPUTS.clear()


def generated(target: str) -> Path:
    return _OUTPUTS[target]


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    return load(generated("compose") / "compose.yaml")[0]


def objects(kind: str | None = None) -> list[dict[str, Any]]:
    """Every object the kustomization lists, optionally of one kind."""
    out = generated("kubernetes")
    resources = load(out / "kustomization.yaml")[0]["resources"]
    found = [doc for name in resources for doc in load(out / name)]
    return [doc for doc in found if kind is None or doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    return next(doc for doc in objects(kind) if doc["metadata"]["name"] == name)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return found


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def gauges() -> set[str]:
    return {family.name for family in Metrics().registry.collect() if family.type == "gauge"}


# Both targets


@pytest.mark.parametrize("target", ["compose", "kubernetes"])
def test_the_same_fleet_file_gives_byte_identical_files_wherever_it_lies(target, tmp_path):
    first = generated(target)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "fleet.yaml").write_text(FLEET)
    assert main([target, "--fleet", str(tmp_path / "elsewhere" / "fleet.yaml"), "--out", str(tmp_path / "o")]) == 0
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "o") for p in (tmp_path / "o").rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (tmp_path / "o" / name).read_bytes(), name


def test_the_embedserve_command_dispatches_deploy_and_names_a_bad_fleet_file(tmp_path, capsys):
    (tmp_path / "fleet.yaml").write_text("models: [{name: m}]\n")
    assert cli.main(["deploy", "compose", "--fleet", str(tmp_path / "fleet.yaml"), "--out", str(tmp_path)]) == 2
    assert "models[0] needs a model_id" in capsys.readouterr().err
    assert not (tmp_path / "compose.yaml").exists()


def test_deploy_imports_neither_torch_nor_the_engines_nor_the_http_layer():
    code = (
        "import sys, embedserve.deploy\n"
        "banned = ('torch', 'embedserve.engines', 'embedserve.http')\n"
        "print(sorted(m for m in sys.modules if m in banned or m.startswith(tuple(b + '.' for b in banned))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("target", ["compose", "kubernetes"])
def test_the_gateway_reads_a_fleet_file_that_routes_each_generated_model_to_its_service(target):
    out = generated(target)
    if target == "compose":
        text = (out / "gateway-fleet.yaml").read_text()
        expected_token = "/run/secrets/gateway_token"
    else:
        text = named("ConfigMap", "embedserve-gateway")["data"]["fleet.yaml"]
        expected_token = "/run/secrets/embedserve/token"
    path = out.parent / f"gateway-{target}.yaml"
    path.write_text(text)
    fleet = load_fleet(path)
    urls = {m.name: m.worker_urls for m in fleet.models}
    assert urls == {
        "minilm": ("http://worker-minilm:3000",),
        "BGE/Reranker": ("http://worker-bge-reranker:3000",),
        "remote": ("http://10.0.0.7:3000",),  # runs elsewhere: routed to, not generated
    }
    assert fleet.gateway.token_file == expected_token
    assert fleet.model("minilm").settings.max_batch_tokens == 8192  # type: ignore[union-attr]


# Compose


def test_compose_publishes_only_the_gateway_and_grafana_and_generates_no_service_for_a_remote_model():
    services = compose()["services"]
    assert set(services) == {"gateway", "worker-minilm", "worker-bge-reranker", "prometheus", "grafana"}
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"gateway", "grafana"}
    assert services["gateway"]["ports"] == ["8080:8080"]


def test_compose_workers_get_their_settings_as_variables_the_cli_reads_back_unchanged():
    services = compose()["services"]
    for model in load_fleet(generated("compose").parent / "fleet.yaml").models[:2]:
        service = services["worker-" + ("minilm" if model.name == "minilm" else "bge-reranker")]
        settings = cli.parse_settings([], service["environment"])
        assert settings.models == (model.settings,)
        assert settings.server.port == model.port
        assert settings.server.hostname == "0.0.0.0"
        assert settings.edge.prometheus_port == 9000
        assert settings.edge.rate_limit_rps == 0  # the gateway limits per key; here every request is the gateway's
        assert service["deploy"]["replicas"] == model.replicas.min


def test_compose_reserves_a_gpu_for_the_gpu_model_only_and_picks_the_image_by_device():
    services = compose()["services"]
    gpu = services["worker-bge-reranker"]
    assert gpu["image"] == "embedserve:cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert services["worker-minilm"]["image"] == "embedserve:cpu"
    assert "resources" not in services["worker-minilm"]["deploy"]


def test_compose_workers_check_health_and_share_the_gateway_token_with_it():
    project = compose()
    services = project["services"]
    assert project["secrets"]["gateway_token"] == {"file": "./secrets/gateway_token"}
    assert project["secrets"]["api_keys"] == {"file": "./secrets/api_keys"}
    assert {"gateway_token", "api_keys"} <= set(services["gateway"]["secrets"])
    for name in ("worker-minilm", "worker-bge-reranker"):
        worker = services[name]
        assert worker["secrets"] == ["gateway_token"]
        assert worker["command"] == ["--gateway-token-file", "/run/secrets/gateway_token"]
        assert "/health" in worker["healthcheck"]["test"][-1]
        assert worker["healthcheck"]["start_period"] == "300s"  # loading answers 503 without counting as failing
        assert int(worker["stop_grace_period"].rstrip("s")) > 30


def test_compose_prometheus_scrapes_the_gateway_every_worker_replica_and_the_remote_workers():
    config = yaml.safe_load((generated("compose") / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["embedserve-gateway"]["static_configs"] == [{"targets": ["gateway:8080"]}]
    assert jobs["embedserve-workers"]["dns_sd_configs"] == [
        {"names": ["worker-minilm"], "type": "A", "port": 9000},
        {"names": ["worker-bge-reranker"], "type": "A", "port": 9000},
    ]
    assert jobs["embedserve-external-workers"]["static_configs"] == [{"targets": ["10.0.0.7:3000"]}]
    assert config["rule_files"] == ["alerts.yml"]


def test_compose_grafana_provisions_the_repository_dashboard_on_the_prometheus_datasource():
    out = generated("compose")
    assert (out / "grafana" / "dashboards" / "embedserve.json").read_bytes() == DASHBOARD.read_bytes()
    sources = yaml.safe_load((out / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    assert [(s["type"], s["url"], s["isDefault"]) for s in sources] == [("prometheus", "http://prometheus:9090", True)]
    provider = yaml.safe_load((out / "grafana/provisioning/dashboards/embedserve.yaml").read_text())["providers"][0]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_alert_rules_cover_errors_refusals_waits_and_down_workers_with_metrics_the_server_exposes():
    groups = yaml.safe_load((generated("compose") / "prometheus" / "alerts.yml").read_text())["groups"]
    rules = {(r["alert"], r["labels"].get("model")): r["expr"] for r in groups[0]["rules"]}
    assert set(rules) == {
        ("EmbedserveWorkerDown", None),
        ("EmbedserveGatewayDown", None),
        ("EmbedserveHigh5xxRatio", None),
        ("EmbedserveSustained429Ratio", None),
        ("EmbedservePredictedWaitOverLimit", "minilm"),
        ("EmbedservePredictedWaitOverLimit", "BGE/Reranker"),
    }
    assert rules["EmbedservePredictedWaitOverLimit", "minilm"].endswith("> 0.5")  # the model's max_queue_time
    assert rules["EmbedservePredictedWaitOverLimit", "BGE/Reranker"].endswith("> 1.0")  # the default
    named_metrics = {m for expr in rules.values() for m in METRIC.findall(expr)}
    assert named_metrics == {"embedserve_requests_total", "embedserve_predicted_wait_seconds"}
    assert named_metrics <= exposed()


@needs_promtool
@pytest.mark.parametrize("target", ["compose", "kubernetes"])
def test_promtool_accepts_the_alert_rules(target):
    rules = generated(target) / "prometheus" / "alerts.yml"
    result = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


@needs_promtool
def test_promtool_accepts_the_compose_scrape_config_and_finds_its_rules():
    config = generated("compose") / "prometheus" / "prometheus.yml"
    result = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


# Kubernetes


def test_every_kubernetes_manifest_validates_strictly_and_only_the_keda_crd_is_skipped():
    out = generated("kubernetes")
    validated = []
    for doc in objects():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any unknown or wrong field
        validated.append(doc["kind"])
    assert sorted(set(validated)) == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "Service",
    ]  # fmt: skip
    # ScaledObject is a KEDA CRD: the validator has no schema for it, so it is checked by hand below.
    for doc in load(out / "keda" / "scaledobjects.yaml"):
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    listed = load(out / "kustomization.yaml")[0]["resources"]
    assert listed == ["gateway.yaml", "worker-bge-reranker.yaml", "worker-minilm.yaml"]


def test_worker_probes_say_ready_only_when_loaded_and_alive_while_draining():
    for name in ("worker-minilm", "worker-bge-reranker"):
        spec = container(named("Deployment", name))
        startup, ready, alive = spec["startupProbe"], spec["readinessProbe"], spec["livenessProbe"]
        # /health is 503 while loading and while draining (routes/tei.py): it gates startup and readiness...
        assert startup["httpGet"] == {"path": "/health", "port": "http"}
        assert ready["httpGet"] == {"path": "/health", "port": "http"}
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # a download and a load fit in it
        # ... but not liveness, which must hold while draining: /metrics stays 200 (open, no admission).
        assert alive["httpGet"] == {"path": "/metrics", "port": "http"}
        assert {p["name"]: p["containerPort"] for p in spec["ports"]} == {"http": 3000, "metrics": 9000}


def test_the_grace_period_outlasts_the_prestop_pause_and_the_drain(tmp_path):
    (tmp_path / "fleet.yaml").write_text(FLEET)
    for drain in (30.0, 120.5):
        argv = ["kubernetes", "--fleet", str(tmp_path / "fleet.yaml"), "--out", str(tmp_path / str(drain))]
        assert main([*argv, "--graceful-shutdown-timeout", str(drain)]) == 0
        deployments = [d for d in load(tmp_path / str(drain) / "worker-minilm.yaml") if d["kind"] == "Deployment"]
        pod = deployments[0]["spec"]["template"]["spec"]
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert float(env["EMBEDSERVE_GRACEFUL_SHUTDOWN_TIMEOUT"]) == drain
        assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SECONDS)]
        assert pod["terminationGracePeriodSeconds"] > PRESTOP_SECONDS + drain


def test_only_the_gpu_model_asks_for_a_gpu():
    gpu = named("Deployment", "worker-bge-reranker")
    cpu = named("Deployment", "worker-minilm")
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container(gpu)["image"] == "embedserve:cuda"
    assert gpu["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert not any("nvidia" in key for part in container(cpu)["resources"].values() for key in part)
    assert container(cpu)["image"] == "embedserve:cpu"
    assert "tolerations" not in cpu["spec"]["template"]["spec"]
    assert cpu["spec"]["replicas"] == 2


def test_workers_and_gateway_run_non_root_on_a_read_only_root_with_their_caches_on_empty_dirs():
    for deployment in objects("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        spec = container(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 10000  # no collision with a host account
        assert pod["automountServiceAccountToken"] is False
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["securityContext"]["allowPrivilegeEscalation"] is False
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        writable = {m["mountPath"] for m in spec["volumeMounts"] if m["name"] in empty}
        assert "/tmp" in writable
        env = {e["name"]: e["value"] for e in spec["env"]}
        for cache_dir in (env[k] for k in ("HF_HOME", "EMBEDSERVE_ENGINE_CACHE_DIR", "XDG_CACHE_HOME") if k in env):
            assert any(cache_dir.startswith(mount + "/") for mount in writable), cache_dir


def test_the_network_policy_lets_only_the_gateway_reach_a_worker_api_port():
    gateway_pods = named("Deployment", "embedserve-gateway")["spec"]["template"]["metadata"]["labels"]
    for name in ("worker-minilm", "worker-bge-reranker"):
        policy = named("NetworkPolicy", name)["spec"]
        worker_pods = named("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        other_pods = [
            d["spec"]["template"]["metadata"]["labels"] for d in objects("Deployment") if d["metadata"]["name"] != name
        ]
        assert matches(policy["podSelector"]["matchLabels"], worker_pods)
        assert not any(matches(policy["podSelector"]["matchLabels"], labels) for labels in other_pods)
        assert policy["policyTypes"] == ["Ingress"]
        api, metrics = policy["ingress"]
        assert api["ports"] == [{"protocol": "TCP", "port": 3000}]
        assert [matches(peer["podSelector"]["matchLabels"], gateway_pods) for peer in api["from"]] == [True]
        assert all("namespaceSelector" not in peer and "ipBlock" not in peer for peer in api["from"])
        assert metrics["ports"] == [{"protocol": "TCP", "port": 9000}]  # Prometheus: the metrics port only


def test_services_and_disruption_budgets_select_their_own_deployment_pods():
    for deployment in objects("Deployment"):
        name = deployment["metadata"]["name"]
        pods = deployment["spec"]["template"]["metadata"]["labels"]
        assert matches(named("Service", name)["spec"]["selector"], pods)
        budget = named("PodDisruptionBudget", name)["spec"]
        assert matches(budget["selector"]["matchLabels"], pods)
        assert budget["maxUnavailable"] == 1  # never minAvailable: a one-replica model must not block node drains


def test_each_scalable_model_autoscales_on_a_gauge_the_server_really_exposes():
    hpas = {doc["metadata"]["name"]: doc["spec"] for doc in objects("HorizontalPodAutoscaler")}
    assert set(hpas) == {"worker-minilm"}  # the GPU model has a fixed replica count: nothing to scale
    spec = hpas["worker-minilm"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker-minilm"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 4)
    (metric,) = spec["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] in gauges()
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "250m"}  # half of max_queue_time
    adapter = yaml.safe_load((generated("kubernetes") / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert METRIC.findall(rule["seriesQuery"]) == [metric["pods"]["metric"]["name"]]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_the_keda_alternative_scales_the_same_deployment_on_the_same_gauge():
    (scaled,) = load(generated("kubernetes") / "keda" / "scaledobjects.yaml")
    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"] == {"name": "worker-minilm"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 4)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    assert set(METRIC.findall(trigger["metadata"]["query"])) <= gauges()
    assert 'model="minilm"' in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == "0.25"


def test_the_in_cluster_scrape_config_labels_pods_for_the_adapter():
    config = yaml.safe_load((generated("kubernetes") / "prometheus" / "prometheus.yml").read_text())
    workers = next(job for job in config["scrape_configs"] if job["job_name"] == "embedserve-workers")
    targets = {r.get("target_label") for r in workers["relabel_configs"]}
    assert {"namespace", "pod"} <= targets  # what the adapter rule maps back to Kubernetes objects
    assert {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics", "action": "keep"} in (
        workers["relabel_configs"]
    )
