"""The live server against its own OpenAPI document: schemathesis generates requests from the document (examples,
boundary values, random and deliberately invalid data, sequences) and runs every check it has on each answer:
no 5xx; only documented statuses, content types and headers; bodies that fit the documented schemas; valid requests
accepted and invalid ones refused with a 4xx; 405 with ``Allow`` for undocumented methods; 401 without the key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from embedserve.settings import EdgeSettings
from tests.conftest import model_settings, run_server

pytestmark = pytest.mark.integration

KEY = "conformance-key"
FUZZ_SECONDS = 40
"""schemathesis's whole budget (it fuzzes until spent); with start-up the test takes about a minute on 2 cores."""


def test_the_live_server_answers_as_its_openapi_document_says(
    minilm_path: Path, reranker_path: Path, classifier_path: Path, tmp_path: Path
):
    pytest.importorskip("schemathesis")
    st = Path(sys.executable).parent / "st"
    # One model of each kind the bundled model can make, so every route but /embed_sparse is in the document, and
    # API keys on, so the ignored_auth check has something to check.
    models = (
        model_settings(minilm_path),
        model_settings(reranker_path, served_model_name="reranker"),
        model_settings(classifier_path, served_model_name="classifier"),
    )
    with run_server(*models, edge=EdgeSettings(rate_limit_rps=0, api_key=(KEY,))) as server:
        with server.client(headers={"authorization": f"Bearer {KEY}"}) as client:
            paths = client.get("/openapi.json").json()["paths"]
        assert {"/", "/embed", "/similarity", "/rerank", "/v1/rerank", "/v2/rerank", "/predict"} <= set(paths)
        # One worker: with two, schemathesis builds hypothesis strategies on two threads, and CPython 3.11's ast
        # module is not thread-safe (a CI run died in hypothesis's ast.parse with "SystemError: AST constructor
        # recursion depth mismatch" after 5,774 cases had passed).
        run = subprocess.run(
            [str(st), "run", f"{server.url}/openapi.json", "--checks", "all", "--max-time", str(FUZZ_SECONDS),
             "--workers", "1", "--header", f"Authorization: Bearer {KEY}", "--request-timeout", "30"],
            cwd=tmp_path,  # schemathesis keeps its example database in the working directory
            capture_output=True,
            text=True,
            timeout=FUZZ_SECONDS + 120,
            env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    # schemathesis prints "N generated" per phase; a phase that generated nothing tested nothing.
    assert not re.search(r"(?<![\d,])0 generated", run.stdout), run.stdout[-5000:]
