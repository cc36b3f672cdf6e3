"""The installed ``embedserve`` command, started as a real process, serves the official OpenAI SDK and curl-style
clients, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

EATING = "A man is eating food."
BREAD = "A man is eating a piece of bread."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command() -> str:
    script = Path(sys.executable).parent / "embedserve"
    assert script.exists(), "the embedserve console script is not installed in this environment"
    return str(script)


def wait_healthy(
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 120,
    *,
    path: str = "/health",
    name: str = "embedserve",
) -> None:
    """Poll ``url + path`` until it answers 200; fail with ``log`` if the process exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{name} did not become ready: {log.read_text()[-2000:]}")


@contextmanager
def serving(args: list[str], log: Path, timeout: float = 120) -> Iterator[str]:
    """``embedserve ARGS --port P`` offline, its output in ``log``: its URL once healthy; SIGTERM when done."""
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [command(), *args, "--port", str(port)],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log, timeout=timeout)
        yield url
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


@pytest.fixture(scope="module")
def served(minilm_path, tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    # float32 through the environment (like TEI's DTYPE): the golden values below are float32's; the default
    # (bfloat16 where the CPU has it) is served by test_model_kinds' process and checked in test_precision.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDSERVE_SERVED_MODEL_NAME": "minilm", "DTYPE": "float32"}
    log = tmp_path_factory.mktemp("embedserve") / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [command(), "--model-id", str(minilm_path), "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_openai_sdk_gets_embeddings_with_its_default_base64_and_with_floats(served):
    openai = pytest.importorskip("openai")
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    default = client.embeddings.create(model="minilm", input=[EATING, BREAD])
    floats = client.embeddings.create(model="minilm", input=[EATING, BREAD], encoding_format="float")
    for result in (default, floats):
        vectors = np.array([item.embedding for item in result.data])
        assert vectors.shape == (2, 384)
        assert float(vectors[0] @ vectors[1]) == pytest.approx(0.7553, abs=1e-4)
        assert result.model == "minilm"
        assert result.usage.prompt_tokens == result.usage.total_tokens == 8 + 11
    np.testing.assert_allclose(
        [item.embedding for item in default.data], [item.embedding for item in floats.data], atol=1e-6
    )
    assert [model.id for model in client.models.list().data] == ["minilm"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="not-served", input="x")
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model="minilm", input="x", dimensions=100_000)


def test_tei_route_and_info_over_plain_http(served):
    url, _ = served
    response = httpx.post(f"{url}/embed", json={"inputs": EATING})
    assert response.status_code == 200
    assert len(response.json()[0]) == 384
    info = httpx.get(f"{url}/info").json()
    assert info["served_model_name"] == "minilm"
    assert info["max_input_length"] == 256
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}


def test_sigterm_stops_the_process_with_exit_status_zero(served):
    _, process = served
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_a_bad_flag_combination_fails_at_start_with_a_message_naming_the_flag():
    result = subprocess.run(
        [command(), "--max-client-batch-size", "64", "--max-concurrent-requests", "16"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--max-client-batch-size" in result.stderr
    assert "--max-concurrent-requests" in result.stderr


def test_a_model_that_cannot_load_makes_the_command_exit_non_zero(tmp_path):
    result = subprocess.run(
        [command(), "--model-id", str(tmp_path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert result.returncode == 1
    assert str(tmp_path) in result.stderr
