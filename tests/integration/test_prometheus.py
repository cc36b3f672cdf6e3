"""A real Prometheus (Debian's `prometheus`) scrapes a real gateway and real workers from the scrape config
`embedserve deploy compose` writes, and evaluates its alert rules; the autoscalers' queries, run against it, return
each worker's predicted wait; `promtool check metrics` finds nothing to fix in the gateway's or a worker's /metrics.

The generated config finds workers by their Compose service names (DNS); here each name's targets are the loopback
metrics ports of its workers, labelled with the `namespace` and `pod` that the in-cluster config's relabelling adds
(prometheus-adapter maps those labels back to pods; Debian's build has no Kubernetes discovery to produce them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from embedserve.deploy import main
from embedserve.deploy.common import GATEWAY_JOB, WORKERS_JOB, worker_name
from embedserve.deploy.monitoring import SCALE_METRIC
from embedserve.fleet import parse_fleet
from tests.integration.test_command import command, free_port, wait_healthy

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
if PROMETHEUS is None or PROMTOOL is None:
    pytest.skip(
        "prometheus/promtool not installed (Debian: apt-get install prometheus; ./dev test installs it)",
        allow_module_level=True,
    )

TOKEN = "prometheus-test-token"
NAMESPACE = "fleet"
MODELS = {"a": {"min": 1, "max": 3}, "b": {"min": 1, "max": 2}}
"""One worker each; max above min, so both get an HPA and a KEDA ScaledObject."""
SERIES_TIMEOUT = 60.0


@dataclass
class Running:
    gateway: str
    workers: dict[str, str] = field(default_factory=dict)
    """pod name -> metrics URL."""
    prometheus: str = ""
    generated: Path = Path()
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(args, env=env or {**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=sink,
                                stderr=subprocess.STDOUT)  # fmt: skip


def _scrape_config(generated: Path, gateway: str, pods: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The generated prometheus.yml with its service names pointed at loopback, scraping every second."""
    config: dict[str, Any] = yaml.safe_load((generated / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    for job in config["scrape_configs"]:
        if job["job_name"] == GATEWAY_JOB:
            job["static_configs"] = [{"targets": [gateway.removeprefix("http://")]}]
        elif job["job_name"] == WORKERS_JOB:
            static = []
            for sd in job.pop("dns_sd_configs"):
                (name,) = sd["names"]
                for pod, target in pods[name].items():
                    static.append({"targets": [target], "labels": {"namespace": NAMESPACE, "pod": pod}})
            job["static_configs"] = static
    return config


@pytest.fixture(scope="module")
def fleet(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("prometheus")
    (root / "token").write_text(TOKEN)
    deployed = {"models": [{"name": n, "model_id": str(minilm_path), "replicas": r} for n, r in MODELS.items()]}
    (root / "fleet.yaml").write_text(yaml.safe_dump(deployed))
    for target in ("compose", "kubernetes"):
        assert main([target, "--fleet", str(root / "fleet.yaml"), "--out", str(root / target)]) == 0

    gateway_port = free_port()
    running = Running(f"http://127.0.0.1:{gateway_port}", generated=root)
    pods: dict[str, dict[str, str]] = {}
    urls: dict[str, str] = {}
    try:
        for model in parse_fleet(deployed).models:
            port, metrics = free_port(), free_port()
            url = f"http://127.0.0.1:{port}"
            pod = f"{worker_name(model)}-0"
            log = root / f"{pod}.log"
            process = _start([command(), "--model-id", str(minilm_path), "--served-model-name", model.name,
                              "--engine", "torch", "--port", str(port), "--prometheus-port", str(metrics),
                              "--gateway-token-file", str(root / "token"), "--rate-limit-rps", "0"], log)  # fmt: skip
            running.processes.append(process)
            wait_healthy(url, process, log)  # one at a time: loading is CPU-bound on two cores
            pods.setdefault(worker_name(model), {})[pod] = f"127.0.0.1:{metrics}"
            running.workers[pod] = f"http://127.0.0.1:{metrics}"
            urls[model.name] = url
        spec = {"gateway": {"port": gateway_port, "hostname": "127.0.0.1", "token_file": str(root / "token")},
                "models": [{"name": n, "model_id": str(minilm_path), "urls": [urls[n]]} for n in MODELS]}  # fmt: skip
        (root / "gateway-fleet.yaml").write_text(yaml.safe_dump(spec))
        gateway = _start([sys.executable, "-m", "embedserve", "gateway", "--fleet", str(root / "gateway-fleet.yaml")],
                         root / "gateway.log", env={**os.environ})  # fmt: skip
        running.processes.append(gateway)
        wait_healthy(running.gateway, gateway, root / "gateway.log", timeout=30)

        prometheus_dir = root / "compose" / "prometheus"
        (prometheus_dir / "loopback.yml").write_text(yaml.safe_dump(_scrape_config(root / "compose", running.gateway,
                                                                                    pods)))  # fmt: skip
        port = free_port()
        running.prometheus = f"http://127.0.0.1:{port}"
        assert PROMETHEUS is not None
        server = _start([PROMETHEUS, f"--config.file={prometheus_dir / 'loopback.yml'}",
                         f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                        root / "prometheus.log", env={**os.environ})  # fmt: skip
        running.processes.append(server)
        wait_healthy(
            running.prometheus, server, root / "prometheus.log", timeout=30, path="/-/ready", name="prometheus"
        )
        yield running
    finally:
        for process in running.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def query(fleet: Running, expression: str) -> list[dict[str, Any]]:
    """An instant query's vector, polled until it has a sample for every worker (or SERIES_TIMEOUT)."""
    deadline = time.monotonic() + SERIES_TIMEOUT
    while True:
        answer = httpx.get(f"{fleet.prometheus}/api/v1/query", params={"query": expression}, timeout=5).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def generated_yaml(fleet: Running, path: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((fleet.generated / path).read_text()) if doc is not None]


def test_prometheus_scrapes_the_gateway_and_every_worker_from_the_generated_config(fleet):
    deadline = time.monotonic() + SERIES_TIMEOUT
    while True:
        targets = httpx.get(f"{fleet.prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        health = {(t["labels"]["job"], t["scrapeUrl"]): t["health"] for t in targets}
        if all(h == "up" for h in health.values()) and len(health) == 1 + len(fleet.workers):
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.5)
    assert {url for job, url in health if job == WORKERS_JOB} == {f"{u}/metrics" for u in fleet.workers.values()}
    assert [job for job, _ in health].count(GATEWAY_JOB) == 1
    up = query(fleet, "up == 1")
    assert len(up) == 1 + len(fleet.workers)


def test_the_hpas_adapter_query_returns_each_workers_predicted_wait(fleet):
    (values,) = generated_yaml(fleet, "kubernetes/prometheus-adapter/values.yaml")
    (rule,) = values["rules"]["custom"]
    hpas = {doc["metadata"]["name"]: doc for doc in generated_yaml(fleet, "kubernetes/worker-a.yaml")
            if doc["kind"] == "HorizontalPodAutoscaler"}  # fmt: skip
    metric = hpas["worker-a"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric == rule["name"]["as"] == SCALE_METRIC

    # The series the adapter discovers: one per worker pod.
    series = httpx.get(f"{fleet.prometheus}/api/v1/series", params={"match[]": rule["seriesQuery"]}).json()["data"]
    assert sorted(s["pod"] for s in series) == sorted(fleet.workers)

    # The HPA's request for one Deployment's pods, as prometheus-adapter expands the rule's metricsQuery.
    for pod in fleet.workers:
        expression = (
            rule["metricsQuery"]
            .replace("<<.Series>>", SCALE_METRIC)
            .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{pod}"')
            .replace("<<.GroupBy>>", "pod")
        )
        (sample,) = query(fleet, expression)
        assert sample["metric"] == {"pod": pod}
        assert float(sample["value"][1]) >= 0  # seconds; 0 while idle


def test_the_keda_query_returns_each_models_summed_predicted_wait(fleet):
    scaled = generated_yaml(fleet, "kubernetes/keda/scaledobjects.yaml")
    assert sorted(doc["spec"]["scaleTargetRef"]["name"] for doc in scaled) == ["worker-a", "worker-b"]
    for doc in scaled:
        (trigger,) = doc["spec"]["triggers"]
        (sample,) = query(fleet, trigger["metadata"]["query"])
        assert float(sample["value"][1]) >= 0


def test_prometheus_loads_and_evaluates_the_generated_alert_rules(fleet):
    deadline = time.monotonic() + SERIES_TIMEOUT
    while True:
        groups = httpx.get(f"{fleet.prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules):
            break
        assert time.monotonic() < deadline, groups
        time.sleep(0.5)
    assert {rule["health"] for rule in rules} == {"ok"}
    assert {rule["name"] for rule in rules} >= {"EmbedserveWorkerDown", "EmbedserveGatewayDown"}
    assert all(rule["state"] == "inactive" for rule in rules)  # nothing is down, nothing refused


def test_promtool_finds_nothing_to_fix_in_the_gateway_and_worker_metrics(fleet):
    # Traffic first, so every labelled family has samples (an empty family shows only its HELP and TYPE).
    for model in MODELS:
        answer = httpx.post(f"{fleet.gateway}/embed", json={"inputs": ["x", "y"], "model": model}, timeout=30)
        assert answer.status_code == 200
    assert httpx.post(f"{fleet.gateway}/embed", json={"inputs": "x", "model": "nope"}).status_code == 404
    pages = {"gateway": f"{fleet.gateway}/metrics", **{pod: f"{url}/metrics" for pod, url in fleet.workers.items()}}
    for name, url in pages.items():
        text = httpx.get(url, timeout=5).text
        assert "embedserve_" in text
        assert PROMTOOL is not None
        checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                                 check=False)  # fmt: skip
        assert checked.returncode == 0, (name, checked.stdout, checked.stderr)
        assert (checked.stdout, checked.stderr) == ("", ""), name
