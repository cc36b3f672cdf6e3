"""A newcomer's first minutes, with the real command: a port in use stops it at once, start-up says what it loads,
health polls stay out of the access log, and every request the README shows is answered by the example models that
``python -m embedserve.engines.examples`` makes offline."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedserve.cli import EXIT_CANNOT_LISTEN
from tests.integration.test_command import command, serving

pytestmark = pytest.mark.integration

README = Path(__file__).parents[2] / "README.md"


def readme_requests() -> list[tuple[str, str | None]]:
    """(route, JSON body or None for a GET) of every ``curl -s localhost:3000/...`` line in the README."""
    text = README.read_text().replace("\\\n", " ")
    found = []
    for match in re.finditer(r"^curl -s localhost:3000(/\S*)(.*)$", text, re.MULTILINE):
        body = re.search(r"-d '([^']*)'", match.group(2))
        found.append((match.group(1), body.group(1) if body else None))
    return found


def test_a_port_in_use_stops_the_command_at_once_with_exit_status_3_before_loading_a_model():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [command(), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            check=False,
        )
    assert result.returncode == EXIT_CANNOT_LISTEN == 3
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in result.stderr
    assert "--port" in result.stderr
    assert "loading model" not in result.stderr  # it stopped before the model load began
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The example models, made by the documented command and served by one process from its config."""
    root = tmp_path_factory.mktemp("examples")
    made = subprocess.run(
        [sys.executable, "-m", "embedserve.engines.examples", str(root / "models")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=True,
    )
    assert "splade:" in made.stdout
    config = root / "models" / "examples.yaml"
    assert f"embedserve --config {config}" in made.stdout
    log = root / "server.log"
    with serving(["--config", str(config), "--rate-limit-rps", "0"], log, timeout=300) as url:
        yield url, log


def test_every_request_the_readme_shows_is_answered_by_the_example_models(examples):
    url, _ = examples
    requests = readme_requests()
    routes = {route for route, _ in requests}
    assert {"/embed", "/v1/embeddings", "/embed_sparse", "/rerank", "/v1/rerank", "/predict", "/tokenize"} <= routes
    for route, body in requests:
        if body is None:
            response = httpx.get(f"{url}{route}", timeout=60)
        else:
            json.loads(body)  # the README shows valid JSON
            response = httpx.post(f"{url}{route}", content=body, headers={"content-type": "application/json"},
                                  timeout=60)  # fmt: skip
        assert response.status_code == 200, (route, body, response.text)


def test_the_sparse_example_answers_what_the_readme_shows(examples):
    url, _ = examples
    body = next(body for route, body in readme_requests() if route == "/embed_sparse")
    assert body is not None
    terms = httpx.post(f"{url}/embed_sparse", content=body, headers={"content-type": "application/json"}).json()[0]
    assert [term["token"] for term in terms] == ["city", "french", "france", "capital", "brazil"]


def test_start_up_logs_each_model_it_loads_and_the_ready_line_has_no_overhead_figure(examples):
    _, log = examples
    text = log.read_text()
    for name, directory in (("reranker", "reranker"), ("sentiment", "sentiment"), ("splade", "cognition/model")):
        assert re.search(rf"loading model \S*{directory} with \w+ \(--engine auto\) on cpu", text), name
        assert f"model {name}: warming up" in text
        ready = re.search(rf"model {name} ready in .*", text)
        assert ready is not None
        assert "overhead" not in ready.group(0)
    assert text.index("listening on http://127.0.0.1:") < text.index("loading model")


def test_health_and_metrics_polls_stay_out_of_the_access_log_by_default(examples):
    url, log = examples
    for _ in range(3):
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200
    assert httpx.post(f"{url}/embed", json={"inputs": "access log"}).status_code == 200
    assert httpx.get(f"{url}/info").status_code == 200
    text = log.read_text()
    assert re.search(r"embedserve\.access: POST /embed 200", text)
    assert re.search(r"embedserve\.access: GET /info 200", text)
    assert "GET /health" not in text
    assert "GET /metrics" not in text
