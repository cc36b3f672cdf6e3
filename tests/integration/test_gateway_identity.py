"""`gateway.worker_auth: google-id-token`: the gateway gets ID tokens from a metadata server and sends them to its
workers, as it must when the workers are private Cloud Run services.

Two local HTTP servers play Google's parts: a metadata server that issues unsigned JWTs (audience and expiry as
requested) and counts its calls, and Cloud Run's front door, which lets a call through to the worker's answer only
with a token for its own URL (a signature check is Cloud Run's job, not the gateway's)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from embedserve.gateway.client import WorkerClient
from embedserve.gateway.identity import REFRESH_MARGIN, GoogleIdTokens, IdentityTokenError, audience
from tests.integration.test_command import free_port, wait_healthy

pytestmark = pytest.mark.integration

TTL = 3600
Served = TypeVar("Served", bound=ThreadingHTTPServer)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict[str, object]) -> str:
    return ".".join([_b64(b'{"alg":"RS256","typ":"JWT"}'), _b64(json.dumps(claims).encode()), _b64(b"signature")])


def claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


class Metadata(ThreadingHTTPServer):
    """The metadata server's identity endpoint: a token for the asked audience, valid for TTL seconds."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _MetadataHandler)
        self.calls: list[str] = []
        self.status = 200

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _MetadataHandler(BaseHTTPRequestHandler):
    server: Metadata

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        aud = parse_qs(parts.query).get("audience", [""])[0]
        if parts.path != "/computeMetadata/v1/instance/service-accounts/default/identity" or not aud:
            self._send(404, b"not found")
        elif self.headers.get("Metadata-Flavor") != "Google":
            self._send(403, b"missing Metadata-Flavor")  # the real server refuses these too
        else:
            self.server.calls.append(aud)
            body = jwt({"aud": aud, "exp": int(time.time()) + TTL, "iss": "https://accounts.google.com"})
            self._send(self.server.status, body.encode() if self.server.status == 200 else b"error")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class CloudRunFront(ThreadingHTTPServer):
    """A private Cloud Run service: 403 without a bearer token whose audience is this service's URL."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FrontHandler)
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FrontHandler(BaseHTTPRequestHandler):
    server: CloudRunFront
    protocol_version = "HTTP/1.1"

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        found = claims(header.removeprefix("Bearer "))
        return found.get("aud") == self.server.url and float(str(found.get("exp", 0))) > time.time()

    def _answer(self, body: bytes) -> None:
        if not self._authorized():
            self.server.refused += 1
            body, status = b'{"error": "forbidden"}', 403
        else:
            status = 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(b'{"status": "ok"}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer(b"[[0.5, 0.5]]")

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(server: Served) -> Iterator[Served]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def metadata() -> Iterator[Metadata]:
    with serving(Metadata()) as server:
        yield server


@pytest.fixture
def front() -> Iterator[CloudRunFront]:
    with serving(CloudRunFront()) as server:
        yield server


def test_a_token_is_fetched_once_per_audience_and_reused_until_shortly_before_it_expires(metadata):
    now = [time.time()]

    async def scenario() -> None:
        client = WorkerClient()
        try:
            tokens = GoogleIdTokens(client, metadata_host=metadata.host, clock=lambda: now[0])
            first = await tokens.token("https://worker-a.run.app")
            assert claims(first)["aud"] == "https://worker-a.run.app"
            # A burst on a cold audience shares one fetch; a warm one fetches nothing.
            burst = await asyncio.gather(*(tokens.token("https://worker-b.run.app") for _ in range(20)))
            assert len(set(burst)) == 1
            assert await tokens.token("https://worker-a.run.app") == first
            assert metadata.calls == ["https://worker-a.run.app", "https://worker-b.run.app"]

            now[0] += TTL - REFRESH_MARGIN - 5  # still inside the token's safe life
            assert await tokens.token("https://worker-a.run.app") == first
            assert len(metadata.calls) == 2
            now[0] += 10  # now within the margin before exp: replaced
            await tokens.token("https://worker-a.run.app")
            assert metadata.calls[2:] == ["https://worker-a.run.app"]

            metadata.status = 500
            with pytest.raises(IdentityTokenError, match="answered 500"):
                await tokens.token("https://worker-c.run.app")
        finally:
            await client.close()

    asyncio.run(scenario())


def test_the_audience_is_the_workers_service_url_without_a_path():
    assert audience("https://worker-a-abc123-ew.a.run.app/") == "https://worker-a-abc123-ew.a.run.app"
    assert audience("http://127.0.0.1:3001") == "http://127.0.0.1:3001"


def test_the_gateway_reaches_a_private_worker_only_with_its_id_token(metadata, front, tmp_path: Path):
    port = free_port()
    spec = {
        "gateway": {"port": port, "hostname": "127.0.0.1", "worker_auth": "google-id-token"},
        "models": [{"name": "a", "model_id": "m", "urls": [front.url]}],
    }
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(spec))
    log = tmp_path / "gateway.log"
    env = {**os.environ, "GCE_METADATA_HOST": metadata.host}
    env.pop("EMBEDSERVE_GATEWAY_TOKEN", None)
    with log.open("wb") as sink:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "embedserve", "gateway", "--fleet", str(tmp_path / "fleet.yaml")],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, gateway, log, timeout=30)  # the health poll got through the front door
        for _ in range(5):
            answer = httpx.post(f"{base}/embed", json={"inputs": "x", "model": "a"})
            assert answer.status_code == 200, answer.text
            assert answer.json() == [[0.5, 0.5]]
        assert httpx.get(f"{base}/info").json()["models"]["a"] == {"status": "ok"}
        time.sleep(1.5)  # at least one more health poll, with the cached token
        assert front.refused == 0
        assert metadata.calls == [front.url]  # one token for the worker's URL, reused by every call
    finally:
        gateway.kill()
        gateway.wait()

    # Without the setting the same worker refuses the gateway: the token above is what let it in.
    assert httpx.get(f"{front.url}/health").status_code == 403
