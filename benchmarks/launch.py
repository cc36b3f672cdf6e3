"""A server variant up and smoke-tested: how to launch it, the one request that checks it, and the load target with
its requests built once."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks import servers, variants
from benchmarks.loadgen import build_request
from benchmarks.plan import Workload

if TYPE_CHECKING:
    from benchmarks.runner import Options


@dataclass
class Target:
    """A started server and the pre-serialized requests for it."""

    server: servers.RunningServer
    model_name: str
    clip: bool = False  # send the clipped texts (Workload.clipped)
    cache: dict[tuple[str, int], tuple[list[bytes], list[int], list[int]]] = field(default_factory=dict)

    def requests(self, workload: Workload, mix: str, per_request: int) -> tuple[list[bytes], list[int], list[int]]:
        """(request bytes, texts per request, tokens per request) of a shape, built once per server."""
        key = (mix, per_request)
        if key not in self.cache:
            port = self.server.spec.port
            texts = workload.clipped[mix] if self.clip else workload.texts[mix]
            tokens = workload.tokens[mix]
            bodies, n_texts, n_tokens = [], [], []
            for indices in workload.plan(mix, per_request):
                body = json.dumps({"input": [texts[i] for i in indices], "model": self.model_name}).encode()
                bodies.append(build_request(servers.HOST, port, "/v1/embeddings", body))
                n_texts.append(len(indices))
                n_tokens.append(sum(tokens[i] for i in indices))
            self.cache[key] = (bodies, n_texts, n_tokens)
        return self.cache[key]


@contextlib.contextmanager
def spec_for(variant: variants.Variant, options: Options, port: int) -> Iterator[servers.ServerSpec]:
    """How to launch a variant (with what it needs on disk for as long as it runs)."""
    if variant.kind == "embedserve":
        flags = [*variant.flags, *options.embedserve_args]
        yield servers.embedserve_spec(options.model, port, flags, name=variant.name)
    elif variant.kind == "naive":
        yield servers.naive_spec(options.model, port)
    elif variant.kind == "infinity":
        servers.ensure_infinity("torch")
        yield servers.infinity_spec(options.model, port)
    else:
        servers.ensure_infinity(options.infinity_flavor)
        with variants.model_farm(options.model, variants.ensure_onnx(options.model)) as farm:
            yield servers.infinity_optimum_spec(farm, port, options.infinity_flavor, name=variant.name)


def smoke(spec: servers.ServerSpec) -> tuple[str, list[float]]:
    """The served model name, after checking one real request returns two vectors."""
    port = spec.port
    status, models = servers.http_json(port, "/v1/models")
    model_name = "bench"
    if spec.kind == "infinity" and status == 200:
        # Infinity names the model after the last two components of its path.
        model_name = models["data"][0]["id"]
    status, body = servers.http_json(port, "/v1/embeddings", {"input": ["hello world", "a b c"], "model": model_name})
    if status != 200 or len(body.get("data", [])) != 2:
        raise servers.ServerError(f"{spec.name}: smoke request got {status}: {str(body)[:300]}")
    return model_name, body["data"][0]["embedding"]


@dataclass
class Started:
    """A started, smoke-tested server variant: its load target, its results entry so far, its smoke vector."""

    target: Target
    entry: dict[str, Any]
    vector: list[float]


@contextlib.contextmanager
def started(options: Options, variant: variants.Variant, log_name: str = "") -> Iterator[Started]:
    """Start a variant, check one request, and stop it when the block ends; the entry holds what it is (argv,
    version), its start-up time, idle RSS and served model."""
    log = options.out / "server-logs.tmp" / f"{log_name or variant.name}.log"
    with spec_for(variant, options, servers.free_port()) as spec, servers.running(spec, log) as server:
        entry: dict[str, Any] = {
            "description": variant.description,
            "argv": spec.argv,
            "version": variants.server_version(variant, options.infinity_flavor),
        }
        if variant.kind == "infinity-optimum":
            entry["infinity_flavor"] = options.infinity_flavor
        if variant.clip_to_max_length:
            entry["inputs_clipped_to_max_length"] = True
        entry["startup_s"] = server.started_s
        entry["idle_rss_mib"] = server.rss() / 2**20
        model_name, vector = smoke(spec)
        entry["served_model"], entry["dims"] = model_name, len(vector)
        yield Started(Target(server, model_name, clip=variant.clip_to_max_length), entry, vector)
