"""The OpenAPI document and the docs page as a client and a browser meet them: where they are served, behind which
key, and that the page needs nothing but this server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedserve.settings import EdgeSettings
from tests.conftest import RunningServer, model_settings, run_server

pytestmark = pytest.mark.integration

KEY = "docs-key"


@pytest.fixture(scope="module")
def keyed_server(minilm_path: Path) -> Iterator[RunningServer]:
    """MiniLM with API keys on."""
    with run_server(model_settings(minilm_path), edge=EdgeSettings(rate_limit_rps=0, api_key=(KEY,))) as running:
        yield running


def test_the_document_is_served_at_openapi_json_and_at_teis_path_behind_the_key(keyed_server):
    with keyed_server.client() as anonymous:
        for path in ("/openapi.json", "/api-doc/openapi.json"):
            refused = anonymous.get(path)
            assert refused.status_code == 401
            assert refused.json()["error_type"] == "Unauthorized"
    with keyed_server.client(headers={"authorization": f"Bearer {KEY}"}) as client:
        ours, teis = client.get("/openapi.json"), client.get("/api-doc/openapi.json")
    assert ours.status_code == teis.status_code == 200
    assert ours.json() == teis.json()
    document = ours.json()
    assert document["openapi"] == "3.1.0"
    assert document["paths"]["/embed"]["post"]["security"] == [{"apiKey": []}]
    model = document["components"]["schemas"]["EmbedRequest"]["properties"]["model"]
    assert model["anyOf"][0]["enum"] == ["minilm"]
    dimensions = document["components"]["schemas"]["EmbedRequest"]["properties"]["dimensions"]
    assert dimensions["anyOf"][0]["maximum"] == 384  # the loaded model's size


def test_the_docs_page_and_its_assets_are_open_and_served_by_the_server_itself(keyed_server):
    with keyed_server.client() as browser:
        page = browser.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources, "the page loads nothing"
        for source in sources:
            assert not source.startswith(("http:", "https:", "//")), f"{source} is not on this server"
            asset = browser.get("/" + source.removeprefix("./"))
            assert asset.status_code == 200, source
            assert len(asset.content) > 0
        assert 'url: "./openapi.json"' in page.text


def test_only_swagger_uis_own_files_are_served_under_docs(keyed_server):
    with keyed_server.client() as browser:
        for name in ("index.html", "swagger-initializer.js", "..%2F__init__.py", "nothing.js"):
            answer = browser.get(f"/docs/{name}")
            assert answer.status_code == 404, name
            assert answer.json()["error_type"] == "NotFound"
