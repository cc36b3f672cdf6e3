"""The fleet file: parsed into typed specs, and every mistake named by its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embedserve.fleet import GATEWAY_PORT, Replicas, load_fleet, parse_fleet
from embedserve.options import SettingsError

pytestmark = pytest.mark.unit

EXAMPLE = """
gateway:
  port: 9090
  api_key_file: /run/secrets/keys
  token_file: /run/secrets/token
  trusted_proxies: [10.0.0.0/8, 192.168.0.0/16]
models:
  - name: minilm
    model_id: sentence-transformers/all-MiniLM-L6-v2
    replicas: {min: 2, max: 5}
    max_batch_tokens: 8192
    max_queue_time: 0.5
  - name: reranker
    model_id: BAAI/bge-reranker-base
    device: gpu
    replicas: 1
    urls: [http://10.0.0.7:3000/, https://rerank.internal]
"""


def test_a_fleet_file_becomes_a_gateway_and_its_models(tmp_path: Path):
    path = tmp_path / "fleet.yaml"
    path.write_text(EXAMPLE)
    fleet = load_fleet(path)
    assert fleet.gateway.port == 9090
    assert fleet.gateway.trusted_proxies == ("10.0.0.0/8", "192.168.0.0/16")
    assert [m.name for m in fleet.models] == ["minilm", "reranker"]
    minilm, reranker = fleet.models
    assert minilm.replicas == Replicas(2, 5)
    assert minilm.settings.max_batch_tokens == 8192
    assert minilm.settings.max_queue_time == 0.5
    assert minilm.settings.device == "cpu"
    assert minilm.worker_urls == ("http://minilm:3000",)
    assert reranker.device == "gpu"
    assert reranker.settings.device == "cuda"
    assert reranker.replicas == Replicas(1, 1)
    assert reranker.worker_urls == ("http://10.0.0.7:3000", "https://rerank.internal")
    assert fleet.model("reranker") is reranker
    assert fleet.model("nope") is None


def test_the_gateway_section_is_optional():
    fleet = parse_fleet({"models": [{"name": "m", "model_id": "x/y"}]})
    assert fleet.gateway.port == GATEWAY_PORT
    assert fleet.gateway.api_key_file is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["models"][1].update(replicas={"min": 3, "max": 2}),
            "models[1].replicas: max (2) must be at least min (3)",
        ),
        (lambda d: d["models"][0].update(replicas=0), "models[0].replicas: min must be at least 1"),
        (lambda d: d["models"][0].update(replicas="two"), "models[0].replicas must be a number or {min: N, max: M}"),
        (lambda d: d["models"][1].update(device="tpu"), "models[1].device must be cpu or gpu"),
        (lambda d: d["models"][0].update(max_batch_token=1), "models[0] has an unknown key 'max_batch_token'"),
        (lambda d: d["models"][0].update(max_batch_tokens="big"), "models[0].max_batch_tokens must be int"),
        (lambda d: d["models"][0].pop("model_id"), "models[0] needs a model_id"),
        (lambda d: d["models"][0].pop("name"), "models[0] needs a name"),
        (lambda d: d["models"][1].update(name="minilm"), "models[1].name 'minilm' is used twice"),
        (
            lambda d: d["models"][1].update(urls=["ftp://x"]),
            "models[1].urls: 'ftp://x' is not an http(s)://host[:port] URL",
        ),
        (lambda d: d["models"][0].update(port=70000), "models[0].port must be a TCP port"),
        (lambda d: d["gateway"].update(port="80"), "gateway.port must be int"),
        (lambda d: d["gateway"].update(tls=True), "gateway has an unknown key 'tls'"),
        (
            lambda d: d["gateway"].update(worker_auth="oauth"),
            "gateway.worker_auth must be one of none, google-id-token, got 'oauth'",
        ),
        (lambda d: d.update(workers=[]), "unknown top-level key 'workers'"),
        (lambda d: d.update(models=[]), "expected a `models:` list with at least one entry"),
        (lambda d: d["models"][0].update(quantize="int8", dtype="bfloat16"), "models[0]: --quantize int8 replaces"),
    ],
)
def test_a_mistake_is_named_by_its_key(change, message):
    data = yaml.safe_load(EXAMPLE)
    change(data)
    with pytest.raises(SettingsError) as error:
        parse_fleet(data, "fleet.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("fleet.yaml")


def test_an_unreadable_or_broken_file_is_named(tmp_path: Path):
    with pytest.raises(SettingsError, match="missing.yaml"):
        load_fleet(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    with pytest.raises(SettingsError, match="is not valid YAML"):
        load_fleet(broken)
