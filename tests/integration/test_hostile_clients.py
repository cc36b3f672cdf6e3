"""Hostile and broken clients against a real server on embedserve's own connection layer (the uvicorn configuration
the CLI runs), with raw sockets where an HTTP client would not misbehave: a client that leaves is a 499, never a
500; every wait is bounded and every refusal is JSON in its route family's shape; answers that grow with what is
sent are bounded."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from embedserve.http.app import create_app
from embedserve.http.server import uvicorn_config
from embedserve.settings import EdgeSettings, ServerSettings, Settings
from tests.conftest import model_settings
from tests.rawhttp import Answer, read_answer

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 0.5
KEEP_ALIVE = 0.5
MAX_HEADER_BYTES = 4096
MAX_HEADERS = 30
CAP = 16
MAX_RESPONSE = 50_000
JSON_POST = b"Host: t\r\nContent-Type: application/json\r\n"


@dataclass
class Hostile:
    url: str
    port: int
    server: uvicorn.Server

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.settimeout(10)
        return sock

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


@pytest.fixture(scope="module")
def hostile(minilm_path, splade_path) -> Iterator[Hostile]:
    server_settings = ServerSettings(
        header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT, keep_alive_timeout=KEEP_ALIVE,
        max_header_bytes=MAX_HEADER_BYTES, max_headers=MAX_HEADERS, max_connections=CAP,
        max_response_bytes=MAX_RESPONSE,
    )  # fmt: skip
    models = (
        model_settings(minilm_path, engine="torch"),
        model_settings(splade_path, served_model_name="splade", engine="torch"),
    )
    settings = Settings(server=server_settings, edge=EdgeSettings(rate_limit_rps=0), models=models)
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, settings, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise TimeoutError("server did not become ready")
        yield Hostile(url=url, port=port, server=server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within ``seconds``, sending nothing more."""
    sock.settimeout(seconds)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def exchange(hostile: Hostile, data: bytes) -> Answer:
    with hostile.connect() as sock:
        sock.sendall(data)
        return read_answer(sock)


def wait_for(predicate, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


def test_a_client_that_leaves_mid_body_is_recorded_as_499_without_a_traceback(hostile, caplog):
    before_500 = hostile.metric("embedserve_requests_total", route="/embed", model="-", status="500")
    with caplog.at_level(logging.INFO):
        for body in (b'{"inputs": "he', b'5\r\n{"inp\r\n'):  # a lying Content-Length, a chunked body cut short
            framing = b"Content-Length: 100" if body.startswith(b"{") else b"Transfer-Encoding: chunked"
            with hostile.connect() as sock:
                sock.sendall(b"POST /embed HTTP/1.1\r\n" + JSON_POST + framing + b"\r\n\r\n" + body)
                time.sleep(0.05)
        wait_for(lambda: hostile.metric("embedserve_requests_total", route="/embed", model="-", status="499") == 2)
    assert hostile.metric("embedserve_requests_total", route="/embed", model="-", status="500") == before_500
    access = [r for r in caplog.records if r.name == "embedserve.access" and getattr(r, "status", None) == 499]
    assert len(access) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize(
    ("path", "chunks"),
    [
        ("/embed", b'5\r\n{"inp\r\nzz\r\n'),  # a chunk size that is not hex
        ("/v1/embeddings", b'3\r\n{"input": "x"}\r\n0\r\n\r\n'),  # a chunk longer than its declared size
    ],
)
def test_a_lying_chunked_body_gets_400_json_and_the_connection_closes(hostile, path, chunks):
    with hostile.connect() as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\n".encode() + JSON_POST + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
        answer = read_answer(sock)
        assert closed_within(sock, 5)
    assert answer.status == 400
    assert answer.headers["connection"] == "close"
    if path.startswith("/v1/"):
        assert answer.json()["error"]["code"] == "malformed_request"
    else:
        assert answer.json()["error_type"] == "MalformedRequest"


@pytest.mark.parametrize("path", ["/embed", "/v1/embeddings"])
def test_a_body_that_stalls_gets_408_json_after_the_body_timeout_and_the_connection_closes(hostile, path):
    with hostile.connect() as sock:
        started = time.monotonic()
        sock.sendall(f"POST {path} HTTP/1.1\r\n".encode() + JSON_POST + b'Content-Length: 100\r\n\r\n{"in')
        answer = read_answer(sock)
        waited = time.monotonic() - started
        assert closed_within(sock, 5)
    assert answer.status == 408
    assert BODY_TIMEOUT <= waited < BODY_TIMEOUT + 2
    message = answer.json()["error"]["message"] if path.startswith("/v1/") else answer.json()["error"]
    assert "--body-timeout" in message
    kind = answer.json()["error"]["code"] if path.startswith("/v1/") else answer.json()["error_type"]
    assert kind == ("request_timeout" if path.startswith("/v1/") else "RequestTimeout")


def test_a_body_that_no_handler_reads_cannot_hold_the_connection_past_the_body_timeout(hostile):
    with hostile.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nabc")
        assert read_answer(sock).status == 200
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(30):  # a trickle of body bytes never completes the request
                sock.sendall(b"x")
                time.sleep(0.1)
        assert closed_within(sock, 5)
        assert time.monotonic() - started < BODY_TIMEOUT + 3


def test_a_head_that_trickles_in_gets_408_json_at_the_header_timeout_and_the_connection_closes(hostile):
    with hostile.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\n")
        sock.sendall(b"X-Slow: 1")
        answer = read_answer(sock)
        waited = time.monotonic() - started
        assert closed_within(sock, 5)
    assert answer.status == 408
    assert HEADER_TIMEOUT <= waited < HEADER_TIMEOUT + 2
    assert answer.json()["error"]["code"] == "request_timeout"  # the path was known: OpenAI's shape
    assert "--header-timeout" in answer.json()["error"]["message"]


def test_many_slowloris_connections_are_all_answered_408_and_closed_by_the_header_timeout(hostile):
    socks = [hostile.connect() for _ in range(CAP - 2)]
    started = time.monotonic()
    statuses: list[int] = []
    try:
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        for _ in range(3):  # one byte per connection every 0.3 s: each keeps sending, none finishes its head
            time.sleep(0.3)
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
        statuses = [read_answer(sock).status for sock in socks]
        assert all(closed_within(sock, 5) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    assert statuses == [408] * len(socks)
    assert time.monotonic() - started < HEADER_TIMEOUT + 3
    wait_for(lambda: hostile.open_connections() == 0)


def test_a_connection_that_sends_nothing_is_closed_quietly_at_the_header_timeout(hostile):
    with hostile.connect() as sock:
        started = time.monotonic()
        assert closed_within(sock, HEADER_TIMEOUT + 3)
        assert time.monotonic() - started >= HEADER_TIMEOUT - 0.05


def test_an_idle_keep_alive_connection_closes_at_the_keep_alive_timeout_even_with_stray_bytes(hostile):
    with hostile.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_answer(sock).status == 200
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(20):  # blank lines between requests reset nothing
                sock.sendall(b"\r\n")
                time.sleep(0.1)
        assert closed_within(sock, 5)
        assert time.monotonic() - started < KEEP_ALIVE + 2


def test_a_keep_alive_connection_serves_one_request_after_another(hostile):
    with hostile.connect() as sock:
        for path in (b"/health", b"/v1/models", b"/info"):
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_answer(sock).status == 200


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 100, 1_000_000], ids=["just-over", "1MB"])
def test_a_head_over_the_byte_limit_gets_431_json(hostile, size):
    head = b"GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    with hostile.connect() as sock:
        sock.sendall(head)
        answer = read_answer(sock)
        assert closed_within(sock, 5)
    assert answer.status == 431
    assert answer.json()["error"]["code"] == "headers_too_large"
    assert "--max-header-bytes" in answer.json()["error"]["message"]


def test_a_url_over_the_byte_limit_gets_431_json(hostile):
    answer = exchange(hostile, b"GET /v1/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")  # in one read
    assert answer.status == 431
    assert answer.json()["error"]["code"] == "headers_too_large"


def test_a_huge_head_is_refused_while_it_is_still_arriving(hostile):
    with hostile.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + b"a" * (16 * MAX_HEADER_BYTES))
        answer = read_answer(sock)  # the head has not ended: the server answered without reading it whole
        assert closed_within(sock, 5)
    assert answer.status == 431
    assert answer.json()["error_type"] == "HeadersTooLarge"


def test_too_many_header_fields_get_431_json(hostile):
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 5))
    answer = exchange(hostile, b"GET /info HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
    assert answer.status == 431
    assert f"limit of {MAX_HEADERS} (--max-headers)" in answer.json()["error"]


def test_bytes_that_are_not_http_get_400_json(hostile):
    answer = exchange(hostile, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40)
    assert answer.status == 400
    assert answer.json()["error_type"] == "MalformedRequest"


def test_an_upgrade_request_is_answered_as_plain_http_json_and_the_connection_closes(hostile):
    upgrade = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a2V5\r\n"
    with hostile.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n" + upgrade + b"\r\n")
        answer = read_answer(sock)
        assert closed_within(sock, 5)
    assert answer.status == 200
    assert answer.json()["status"] == "ready"


def test_refusals_in_the_connection_layer_are_counted_and_logged_like_every_answer(hostile, caplog):
    before = hostile.metric("embedserve_rejected_requests_total", reason="headers_too_large")
    with caplog.at_level(logging.INFO, logger="embedserve.access"), hostile.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (4 * MAX_HEADER_BYTES))
        assert read_answer(sock).status == 431
    assert hostile.metric("embedserve_rejected_requests_total", reason="headers_too_large") == before + 1
    assert [r.status for r in caplog.records if r.name == "embedserve.access"] == [431]


def test_every_405_names_the_allowed_methods(hostile):
    from embedserve.http.routes import openai, scoring, tei, tokens

    with httpx.Client(base_url=hostile.url) as client:
        for route in (*tei.ROUTES, *openai.ROUTES, *scoring.ROUTES, *tokens.ROUTES):
            path = route.path.replace("{model:model_name}", "minilm")
            response = client.request("PUT", path)
            assert response.status_code == 405, path
            assert set(response.headers["allow"].split(", ")) == route.methods, path
            assert response.headers["content-type"] == "application/json"


def test_tokenize_refuses_an_answer_over_max_response_bytes_before_tokenizing(hostile):
    text = "word " * 2000  # 2,000 words: at least 2,000 tokens of about 60 bytes each
    with httpx.Client(base_url=hostile.url) as client:
        refused = client.post("/tokenize", json={"inputs": text})
        no_spaces = client.post("/tokenize", json={"inputs": "a," * 3000})  # 6,000 tokens in one "word"
        small = client.post("/tokenize", json={"inputs": "Hello world"})
    assert refused.status_code == 422
    assert refused.json()["error_type"] == "Validation"
    assert "50,000-byte limit (--max-response-bytes)" in refused.json()["error"]
    assert "fewer or shorter inputs" in refused.json()["error"]
    assert no_spaces.status_code == 422
    assert "6,002 tokens" in no_spaces.json()["error"]
    assert small.status_code == 200
    assert [t["text"] for t in small.json()[0]] == ["[CLS]", "Hello", "world", "[SEP]"]


def test_decode_refuses_an_answer_over_max_response_bytes(hostile):
    with httpx.Client(base_url=hostile.url) as client:
        refused = client.post("/decode", json={"ids": [7592] * 20_000})  # "hello" 20,000 times
        small = client.post("/decode", json={"ids": [7592, 2088]})
    assert refused.status_code == 422
    assert "--max-response-bytes" in refused.json()["error"]
    assert "decode fewer ids" in refused.json()["error"]
    assert small.json() == ["hello world"]


def test_embed_sparse_refuses_an_answer_over_max_response_bytes_and_top_k_brings_it_under(hostile):
    words = "volcano lava magma crust earth history science"
    texts = [" ".join(f"word{j} topic{i} {words} {j * 7}" for j in range(20)) for i in range(32)]  # ~1,700 terms
    with httpx.Client(base_url=hostile.url) as client:
        refused = client.post("/embed_sparse", json={"model": "splade", "inputs": texts, "return_tokens": True})
        trimmed = client.post("/embed_sparse", json={"model": "splade", "inputs": texts, "top_k": 5})
    assert refused.status_code == 422
    assert "top_k" in refused.json()["error"]
    assert trimmed.status_code == 200
    assert all(len(row) == 5 for row in trimmed.json())


def test_a_connection_over_the_cap_gets_503_json_and_is_closed(hostile):
    wait_for(lambda: hostile.open_connections() == 0)
    held = [hostile.connect() for _ in range(CAP)]
    try:
        with hostile.connect() as extra:
            extra.sendall(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = read_answer(extra)
            assert closed_within(extra, 5)
    finally:
        for sock in held:
            sock.close()
    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"]["code"] == "too_many_connections"
    wait_for(lambda: hostile.open_connections() == 0)
    assert httpx.get(f"{hostile.url}/health").status_code == 200


def test_past_twice_the_cap_a_connection_is_closed_unanswered(hostile):
    wait_for(lambda: hostile.open_connections() == 0)
    held = [hostile.connect() for _ in range(2 * CAP)]
    try:
        with hostile.connect() as extra:
            with contextlib.suppress(OSError):
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert closed_within(extra, 5)
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: hostile.open_connections() == 0)
