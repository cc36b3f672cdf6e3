"""Image URLs (issue 14): fetched from a real local HTTP server whose address each test allowlists explicitly, and
every address class that must not be reached refused with a 4xx before any connection is made to it.

The proof of "no connection": a listening socket on the refused address (a trap) that must have nothing to accept
after the request. The image server listens on 127.0.0.2 (loopback too, so it is allowlisted by exact address) and
the trap on 127.0.0.1, so a redirect from the allowed server to the trap crosses from allowed to refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from embedserve.errors import ImageFetchError, ImageURLRefusedError
from embedserve.media.fetch import Fetcher
from tests.conftest import model_settings, run_server
from tests.integration.test_images import clip_path, png  # noqa: F401 (the tiny CLIP fixture)

pytestmark = pytest.mark.integration

IMAGE_HOST = "127.0.0.2"
SLOW_SECONDS = 30


class ImageHandler(BaseHTTPRequestHandler):
    """/cat.png, /big.png (no Content-Length), /page (HTML), /missing (404), /slow.png (headers, then silence),
    /redirect?to=URL."""

    server: ImageServer

    def do_GET(self) -> None:
        url = urlparse(self.path)
        self.server.seen.append((url.path, self.headers.get("Host", "")))
        if url.path == "/cat.png":
            self._answer(200, png(seed=7), "image/png")
        elif url.path == "/page":
            self._answer(200, b"<html><body>not an image</body></html>", "text/html")
        elif url.path == "/big.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            with contextlib.suppress(OSError):  # the fetcher hangs up at its limit
                for _ in range(100):
                    self.wfile.write(b"\x00" * 65536)
        elif url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(url.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/slow.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            self.server.slow_started.set()
            self.server.release.wait(SLOW_SECONDS)
        else:
            self._answer(404, b"no such image", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class ImageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((IMAGE_HOST, 0), ImageHandler)
        self.seen: list[tuple[str, str]] = []
        self.slow_started = threading.Event()
        self.release = threading.Event()

    @property
    def base(self) -> str:
        return f"http://{IMAGE_HOST}:{self.server_address[1]}"


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


class Trap:
    """A listening socket that must never see a connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def untouched(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0.2)  # a connection made to it would be waiting here
        return not readable


@pytest.fixture
def trap() -> Iterator[Trap]:
    made = Trap()
    yield made
    made.sock.close()


@pytest.fixture(scope="module")
def url_server(clip_path: Path):  # noqa: F811 (the imported fixture)
    with run_server(model_settings(clip_path, served_model_name="clip"), image_max_bytes=200_000,
                    image_fetch_allow=(f"{IMAGE_HOST}/32",), image_fetch_allow_http=True,
                    image_fetch_timeout=3.0) as running:  # fmt: skip
        yield running


def embed(server, *inputs: object):
    with server.client() as client:
        return client.post("/v1/embeddings", json={"input": list(inputs)})


def test_an_allowlisted_image_url_embeds_like_the_same_image_inline(url_server, images):
    inline = f"data:image/png;base64,{base64.b64encode(png(seed=7)).decode()}"
    response = embed(url_server, {"image": f"{images.base}/cat.png"}, {"image": inline})
    assert response.status_code == 200, response.text
    fetched, sent = (np.array(row["embedding"]) for row in response.json()["data"])
    assert float(fetched @ sent) >= 0.9999
    with url_server.client() as client:
        metrics = client.get("/metrics").text
    assert 'embedserve_image_fetches_total{outcome="ok"}' in metrics


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{trap}/x.png",
        "http://[::ffff:127.0.0.1]:{trap}/x.png",
        "http://[::ffff:7f00:1]:{trap}/x.png",
        "http://2130706433:{trap}/x.png",
        "http://0x7f.1:{trap}/x.png",
        "http://localhost:{trap}/x.png",
        "{images}/redirect?to=http://127.0.0.1:{trap}/x.png",
        "{images}/redirect?to=http://localhost:{trap}/x.png",
    ],
    ids=["loopback", "ipv4-mapped", "ipv4-mapped-hex", "decimal", "hex-dotted", "name-resolving-to-loopback",
         "redirect-to-loopback", "redirect-to-name-resolving-to-loopback"],
)  # fmt: skip
def test_refused_addresses_get_422_without_a_connection_to_them(url_server, images, trap, url):
    target = url.format(trap=trap.port, images=images.base)
    response = embed(url_server, "a text", {"image": target})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("image_url_refused", "input")
    assert "input[1]" in error["message"]
    assert trap.untouched()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata service"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "a cloud metadata service"),
        ("http://10.1.2.3/x.png", "private"),
        ("http://192.168.0.1/x.png", "private"),
        ("http://[fe80::1]/x.png", "link-local"),
        ("http://224.0.0.1/x.png", "multicast"),
        ("http://240.0.0.1/x.png", "reserved"),
        ("http://0.0.0.0/x.png", "unspecified"),
        ("http://100.64.0.1/x.png", "not public"),
        ("http://[2002:7f00:1::]/x.png", "loopback"),
        ("http://[64:ff9b::a9fe:a9fe]/x.png", "a cloud metadata service"),
    ],
)
def test_every_non_public_address_class_is_refused_by_name(url_server, url, why):
    response = embed(url_server, {"image": url})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "image_url_refused"
    assert why in error["message"]


def test_a_slow_image_server_times_out_without_holding_a_batch(url_server, images):
    images.slow_started.clear()
    outcome: dict[str, object] = {}

    def slow() -> None:
        outcome["response"] = embed(url_server, {"image": f"{images.base}/slow.png"})

    thread = threading.Thread(target=slow)
    started = time.monotonic()
    thread.start()
    assert images.slow_started.wait(30)
    # While the fetch hangs, the model serves others: the image is fetched before admission, never in a batch.
    assert embed(url_server, "served meanwhile").status_code == 200
    assert thread.is_alive()
    thread.join(60)
    response = outcome["response"]
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "image_fetch_failed"
    assert "--image-fetch-timeout" in response.json()["error"]["message"]
    assert time.monotonic() - started < SLOW_SECONDS  # the fetch gave up, the server did not let it go


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/big.png", 413, "image_too_large"),
        ("/page", 422, "invalid_image"),
        ("/missing", 422, "image_fetch_failed"),
    ],
)
def test_fetched_bodies_are_held_to_the_same_limits(url_server, images, path, status, code):
    response = embed(url_server, {"image": f"{images.base}{path}"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert "not an image</body>" not in error["message"]  # nothing the remote sent is echoed


def test_redirects_are_bounded(url_server, images):
    url = f"{images.base}/cat.png"
    for _ in range(4):  # one more than the default --image-fetch-max-redirects (3)
        url = f"{images.base}/redirect?to={url}"
    response = embed(url_server, {"image": url})
    assert response.status_code == 422, response.text
    assert "redirects more than 3 times" in response.json()["error"]["message"]


def fetcher(**overrides: object) -> Fetcher:
    values: dict[str, object] = {"max_bytes": 200_000, "timeout": 3.0, "max_redirects": 3, "concurrency": 4,
                                 "allow_http": True}  # fmt: skip
    values.update(overrides)
    return Fetcher(**values)  # type: ignore[arg-type]


def test_a_host_name_resolving_to_a_private_address_is_refused_without_a_connection(trap):
    async def resolver(host: str, port: int) -> list[str]:
        return {"images.example": ["127.0.0.1"], "mixed.example": ["93.184.216.34", "127.0.0.1"]}[host]

    for host in ("images.example", "mixed.example"):  # one inside address among public ones is enough to refuse
        with pytest.raises(ImageURLRefusedError, match="resolves to it"):
            asyncio.run(fetcher(resolver=resolver).fetch(f"http://{host}:{trap.port}/x.png"))
    assert trap.untouched()


def test_the_connection_goes_to_the_checked_address_with_the_host_name_kept(images):
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return [IMAGE_HOST]

    port = images.server_address[1]
    body = asyncio.run(fetcher(resolver=resolver, allow=(IMAGE_HOST,)).fetch(f"http://cdn.example:{port}/cat.png"))
    assert body == png(seed=7)
    assert lookups == ["cdn.example"]  # resolved once; the connection used that answer
    assert images.seen[-1] == ("/cat.png", f"cdn.example:{port}")


def test_an_international_host_name_is_resolved_and_sent_in_its_ascii_form(images):
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return [IMAGE_HOST]

    port = images.server_address[1]
    asyncio.run(fetcher(resolver=resolver, allow=(IMAGE_HOST,)).fetch(f"http://bücher.example:{port}/cat.png"))
    assert lookups == ["xn--bcher-kva.example"]
    assert images.seen[-1] == ("/cat.png", f"xn--bcher-kva.example:{port}")


def test_only_https_without_the_http_flag_and_no_urls_at_all_with_concurrency_zero(images):
    with pytest.raises(ImageURLRefusedError, match="must start with https://"):
        asyncio.run(fetcher(allow_http=False, allow=(IMAGE_HOST,)).fetch(f"{images.base}/cat.png"))
    with pytest.raises(ImageURLRefusedError, match="turned off"):
        asyncio.run(fetcher(concurrency=0, allow=(IMAGE_HOST,)).fetch(f"{images.base}/cat.png"))


def test_a_host_that_does_not_resolve_fails_cleanly():
    async def resolver(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(ImageFetchError, match="does not resolve"):
        asyncio.run(fetcher(resolver=resolver).fetch("http://nowhere.example/x.png"))


def test_decoded_images_keep_no_reference_to_the_fetch(images):
    data = asyncio.run(fetcher(allow=(IMAGE_HOST,)).fetch(f"{images.base}/cat.png"))
    assert isinstance(data, bytes)
    assert io.BytesIO(data).read(8) == b"\x89PNG\r\n\x1a\n"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ImageServer, Path, list[str]]]:
    """The image server over TLS with a certificate for images.test from a CA made here; the server names it
    receive through SNI are recorded."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test CA")
    tmp = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA", "-keyout",
             "ca.key", "-out", "ca.pem", cwd=tmp)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=images.test", "-keyout", "leaf.key", "-out",
             "leaf.csr", cwd=tmp)  # fmt: skip
    (tmp / "san.ext").write_text("subjectAltName=DNS:images.test\n")
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days",
             "1", "-extfile", "san.ext", "-out", "leaf.pem", cwd=tmp)  # fmt: skip
    names: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp / "leaf.pem", tmp / "leaf.key")
    context.sni_callback = lambda sock, name, ctx: names.append(name or "")
    server = ImageServer()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, tmp / "ca.pem", names
    server.shutdown()
    server.server_close()


def test_https_goes_to_the_checked_address_with_the_name_in_sni_host_and_certificate_check(tls_images):
    server, ca, names = tls_images
    port = server.server_address[1]

    async def resolver(host: str, port: int) -> list[str]:
        return [IMAGE_HOST]

    trusting = ssl.create_default_context(cafile=str(ca))
    made = fetcher(resolver=resolver, allow=(IMAGE_HOST,), allow_http=False, verify=trusting)
    assert asyncio.run(made.fetch(f"https://images.test:{port}/cat.png")) == png(seed=7)
    assert names[-1] == "images.test"
    assert server.seen[-1] == ("/cat.png", f"images.test:{port}")
    # The same address under a name the certificate does not hold: the handshake fails, nothing is fetched.
    with pytest.raises(ImageFetchError, match="could not be reached"):
        asyncio.run(made.fetch(f"https://other.test:{port}/cat.png"))
    assert names[-1] == "other.test"
    assert server.seen[-1] == ("/cat.png", f"images.test:{port}")
