"""Traces reach a real OTLP/gRPC receiver: a request span continuing the client's traceparent, its tokenize /
queue / inference children, the batch span they link to, and the right attributes (never text or keys)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from embedserve.settings import EdgeSettings
from tests.conftest import model_settings, run_server

grpc = pytest.importorskip("grpc")
trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
trace_service_grpc = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc")

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SECRET_TEXT = "the secret launch date is friday"
KEY = "sk-tracing-key-42"


class Receiver(trace_service_grpc.TraceServiceServicer):  # type: ignore[misc]
    """A minimal OTLP trace collector: keeps every export request."""

    def __init__(self) -> None:
        self.exports: list = []

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        self.exports.append(request)
        return trace_service.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    collector = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, port
    finally:
        server.stop(grace=None)


def attributes(span) -> dict:
    found = {}
    for kv in span.attributes:
        value = kv.value
        found[kv.key] = value.string_value if value.HasField("string_value") else value.int_value
    return found


def test_request_and_batch_spans_reach_the_collector_continuing_the_client_trace(minilm_path, receiver):
    collector, port = receiver
    edge = EdgeSettings(otlp_endpoint=f"http://127.0.0.1:{port}", otlp_service_name="embedserve-test",
                        rate_limit_rps=0, api_key=(KEY,))  # fmt: skip
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "authorization": f"Bearer {KEY}"}
    with run_server(model_settings(minilm_path), edge=edge) as server, server.client() as client:
        response = client.post("/embed", json={"inputs": [SECRET_TEXT, "hello"]}, headers=headers)
        assert response.status_code == 200
        tokens = int(response.headers["x-compute-tokens"])
    # leaving the server flushed the exporter
    spans = []
    for export in collector.exports:
        for resource_spans in export.resource_spans:
            service = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}["service.name"]
            assert service == "embedserve-test"
            for scope in resource_spans.scope_spans:
                spans.extend(scope.spans)
    by_name: dict[str, list] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)

    (request,) = by_name["POST /embed"]
    assert request.trace_id.hex() == TRACE_ID
    assert request.parent_span_id.hex() == PARENT_ID
    attrs = attributes(request)
    assert attrs["embedserve.model"] == "minilm"
    assert attrs["embedserve.inputs"] == 2
    assert attrs["embedserve.tokens"] == tokens
    assert attrs["http.response.status_code"] == 200
    assert attrs["embedserve.key_id"] != KEY

    for stage in ("tokenize", "queue", "inference"):
        (child,) = by_name[stage]
        assert child.trace_id == request.trace_id
        assert child.parent_span_id == request.span_id
        assert request.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= request.end_time_unix_nano

    batches = {span.span_id: span for span in by_name["inference batch"] if attributes(span)["embedserve.model"]}
    (inference,) = by_name["inference"]
    assert inference.links
    for link in inference.links:
        batch = batches[link.span_id]
        assert attributes(batch)["embedserve.batch.inputs"] >= 1

    exported = b"".join(export.SerializeToString() for export in collector.exports)
    assert SECRET_TEXT.encode() not in exported
    assert KEY.encode() not in exported


def test_without_an_endpoint_the_tracing_sdk_is_never_loaded():
    code = (
        "import sys; from embedserve.http.app import create_app; from embedserve.settings import Settings;"
        "app = create_app(Settings()); assert not app.state.ctx.tracing.enabled;"
        "print(any(name.startswith('opentelemetry') for name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def spans_by_service(collector: Receiver) -> dict[str, list]:
    found: dict[str, list] = {}
    for export in collector.exports:
        for resource_spans in export.resource_spans:
            service = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}["service.name"]
            for scope in resource_spans.scope_spans:
                found.setdefault(service, []).extend(scope.spans)
    return found


def test_the_gateway_traces_each_request_and_each_worker_attempt_and_the_worker_continues_the_attempt(
    minilm_path, receiver, tmp_path
):
    """Replica one is stopped after the gateway saw it live, so the request's first attempt fails and the second
    reaches replica two: both attempts are spans under the gateway's request span, and the worker's request span is
    a child of the attempt that reached it, all in the client's trace."""
    from starlette.testclient import TestClient

    from embedserve.fleet import parse_fleet
    from embedserve.gateway.app import create_gateway

    collector, port = receiver
    endpoint = f"http://127.0.0.1:{port}"
    (tmp_path / "keys").write_text(f"{KEY}\n")
    worker_edge = EdgeSettings(otlp_endpoint=endpoint, otlp_service_name="worker", rate_limit_rps=0)
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "authorization": f"Bearer {KEY}"}
    with contextlib.ExitStack() as first:
        stopped = first.enter_context(run_server(model_settings(minilm_path), edge=worker_edge))
        with run_server(model_settings(minilm_path), edge=worker_edge) as second:
            models = [{"name": "minilm", "model_id": str(minilm_path), "urls": [stopped.url, second.url]}]
            gateway_spec = {"otlp_endpoint": endpoint, "otlp_service_name": "gateway", "rate_limit_rps": 0,
                            "api_key_file": str(tmp_path / "keys")}  # fmt: skip
            fleet = parse_fleet({"gateway": gateway_spec, "models": models})
            # no health polls after the first: the gateway keeps believing the stopped replica is live
            with TestClient(create_gateway(fleet, environ={}, interval=3600)) as gateway:
                assert gateway.get("/health").status_code == 200
                first.close()  # replica one stops
                response = gateway.post("/embed", json={"inputs": [SECRET_TEXT]}, headers=headers)
                assert response.status_code == 200
                refused = gateway.post("/embed", json={"inputs": "x"}, headers={"authorization": "Bearer wrong"})
                assert refused.status_code == 401

    spans = spans_by_service(collector)
    (request,) = [s for s in spans["gateway"] if s.name == "POST /embed" and attributes(s)["embedserve.model"] != "-"]
    assert request.trace_id.hex() == TRACE_ID
    assert request.parent_span_id.hex() == PARENT_ID
    attrs = attributes(request)
    assert attrs["http.response.status_code"] == 200
    assert attrs["embedserve.worker"] == second.url
    assert attrs["embedserve.inputs"] == 1
    assert attrs["embedserve.key_id"] != KEY

    calls = sorted((s for s in spans["gateway"] if s.name == "worker call"), key=lambda s: s.start_time_unix_nano)
    assert [attributes(c)["embedserve.worker"] for c in calls] == [stopped.url, second.url]
    failed, served = calls
    assert "error.type" in attributes(failed)
    assert "http.response.status_code" not in attributes(failed)
    assert attributes(served)["http.response.status_code"] == 200
    for call in calls:
        assert call.trace_id == request.trace_id
        assert call.parent_span_id == request.span_id
        assert request.start_time_unix_nano <= call.start_time_unix_nano <= call.end_time_unix_nano
        assert call.end_time_unix_nano <= request.end_time_unix_nano

    (worker_request,) = [s for s in spans["worker"] if s.name == "POST /embed"]
    assert worker_request.trace_id == request.trace_id
    assert worker_request.parent_span_id == served.span_id

    (unauthorized,) = [s for s in spans["gateway"] if attributes(s).get("http.response.status_code") == 401]
    assert attributes(unauthorized)["embedserve.model"] == "-"  # refused before the body was read: no attempt

    exported = b"".join(export.SerializeToString() for export in collector.exports)
    assert SECRET_TEXT.encode() not in exported
    assert KEY.encode() not in exported
