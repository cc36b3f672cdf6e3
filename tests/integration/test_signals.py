"""The real embedserve process: SIGTERM drains (health 503, new requests 503, in-flight requests answered), then
exits 0; SIGHUP re-reads the API key file without a restart; --json-output writes one JSON object per line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.test_command import command, free_port, wait_healthy

pytestmark = pytest.mark.integration


def start(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [command(), "--port", str(port), "--served-model-name", "minilm", *args],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process, log)
    return process, url


def inflight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("embedserve_inflight_inputs{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sigterm_answers_every_in_flight_request_then_exits_zero(minilm_path, reference_model, tmp_path):
    # Four requests of 32 long inputs are more than --max-queue-time of work here: this test is about the drain.
    args = ["--model-id", str(minilm_path), "--rate-limit-rps", "0", "--max-queue-time", "60"]
    process, url = start(args, tmp_path / "server.log")
    try:
        requests = [
            [f"request {r} text {i}: " + "the farmer watches the fox " * 40 for i in range(32)] for r in range(4)
        ]
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(httpx.post, f"{url}/embed", json={"inputs": r}, timeout=120) for r in requests]
            deadline = time.monotonic() + 30
            while inflight(url) < 4 * 32 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert inflight(url) == 4 * 32
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            health = httpx.get(f"{url}/health")
            alive = httpx.get(f"{url}/metrics")  # what a Kubernetes liveness probe asks (embedserve deploy)
            late = httpx.post(f"{url}/v1/embeddings", json={"input": "too late", "model": "minilm"})
            responses = [future.result() for future in futures]
        assert health.status_code == 503
        assert alive.status_code == 200  # draining is not ready, but alive: no restart cuts the drain short
        assert late.status_code == 503
        assert late.json()["error"]["code"] == "unavailable"
        for texts, response in zip(requests, responses, strict=True):
            assert response.status_code == 200
            got = np.array(response.json())
            expected = reference_model.encode(texts)
            assert np.all(np.sum(got * expected, axis=1) >= 0.9999)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sighup_reloads_the_key_file_and_json_output_writes_json_lines(minilm_path, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("old-key\n")
    log = tmp_path / "server.log"
    process, url = start(["--model-id", str(minilm_path), "--api-key-file", str(keys), "--json-output"], log)
    try:

        def status(key: str) -> int:
            headers = {"authorization": f"Bearer {key}"}
            return httpx.post(f"{url}/embed", json={"inputs": "x"}, headers=headers).status_code

        assert status("old-key") == 200
        assert status("new-key") == 401
        keys.write_text("# rotated\nnew-key\n")
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while status("new-key") != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status("new-key") == 200
        assert status("old-key") == 401
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "embedserve.access"]
    assert len(access) >= 4
    assert {"timestamp", "level", "request_id", "route", "model", "key_id", "inputs", "tokens", "status",
            "latency_ms"} <= set(access[0])  # fmt: skip
    assert not any("old-key" in json.dumps(line) or "new-key" in json.dumps(line) for line in lines)
