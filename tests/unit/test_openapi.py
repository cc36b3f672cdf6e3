"""The OpenAPI document is composed from the code that serves: the application's routes, the body parsers their
handlers call, and the error table. No model is loaded here (the live server's conformance is
tests/integration/test_openapi_conformance.py)."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from embedserve.errors import ERROR_TABLE, BackendError, EmbedServeError, ValidationError
from embedserve.http.app import create_app
from embedserve.http.edge import OPERATIONS
from embedserve.http.fields import Body, Served
from embedserve.http.openapi import SCOPES, document
from embedserve.http.schemas import parse_tei_embed
from embedserve.http.shedding import queued_paths
from embedserve.settings import EdgeSettings, ModelSettings, Settings

pytestmark = pytest.mark.unit


def app_for(*, edge: EdgeSettings | None = None, **model: Any) -> Starlette:
    """An application that is never started: its models stay unloaded, described by their settings alone."""
    spec = ModelSettings(model_id="nowhere/model", served_model_name="m", **model)
    return create_app(Settings(models=(spec,), edge=edge or EdgeSettings()))


def served_routes(app: Starlette) -> set[tuple[str, str]]:
    """(path as the document spells it, method) of every route the application serves but the docs' own."""
    found = set()
    for route in app.routes:
        assert isinstance(route, Route)
        if not OPERATIONS[route.endpoint].listed:
            continue
        path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
        found |= {(path, method.lower()) for method in route.methods or () if method != "HEAD"}
    return found


def test_every_route_the_server_serves_is_in_the_document():
    app = app_for()
    listed = {(path, method) for path, item in document(app)["paths"].items() for method in item}
    assert listed == served_routes(app)
    assert {("/", "post"), ("/similarity", "post"), ("/v2/rerank", "post")} <= listed


def test_every_route_is_declared_with_its_handler():
    app = app_for()
    undeclared = [r.path for r in app.routes if isinstance(r, Route) and r.endpoint not in OPERATIONS]
    assert undeclared == []
    for path, item in document(app)["paths"].items():
        for method, operation in item.items():
            assert "200" in operation["responses"], f"{method} {path} declares no answer"
            assert ("requestBody" in operation) == (method == "post"), f"{method} {path}"


def test_the_document_and_the_docs_page_are_not_listed_in_it():
    paths = document(app_for())["paths"]
    assert not {"/openapi.json", "/api-doc/openapi.json", "/docs", "/docs/{asset}"} & set(paths)


def bodies() -> list[Body[Any]]:
    return list({body.name: body for op in OPERATIONS.values() for body in op.body}.values())


@pytest.mark.parametrize("body", bodies(), ids=lambda body: body.name)
def test_each_body_example_parses_and_fits_the_schema_its_fields_compose(body: Body[Any]):
    schema = body.schema(Served(models=("m",)))
    assert set(schema["properties"]) == {field.key for field in body.fields}
    assert body.examples, f"{body.name} has no example for the docs page"
    for example in body.examples:
        body(example)  # the parser takes it
        jsonschema.Draft202012Validator(schema).validate(example)  # and so does the schema


@pytest.mark.parametrize(
    ("sent", "accepted"),
    [
        ({"inputs": "a"}, True),
        ({"inputs": ["a", "b"], "dimensions": 384.0, "truncation_direction": "LEFT", "normalize": None}, True),
        ({"inputs": []}, False),
        ({"inputs": ["a", ""]}, False),
        ({"inputs": "a", "dimensions": 0}, False),
        ({"inputs": "a", "dimensions": 1.5}, False),
        ({"inputs": "a", "truncation_direction": "up"}, False),
        ({"inputs": "a", "normalize": "yes"}, False),
        ({"inputs": "a", "model": "other"}, False),
        ({"inputs": ["a"] * 33}, False),
        ({"normalize": True}, False),
    ],
)
def test_the_embed_schema_accepts_what_the_parser_accepts(sent: dict[str, Any], accepted: bool):
    """The pipeline checks the model name and the batch limit after parsing; the schema says those too."""
    schema = document(app_for())["components"]["schemas"]["EmbedRequest"]
    assert jsonschema.Draft202012Validator(schema).is_valid(sent) == accepted
    if "model" not in sent and len(sent.get("inputs", ())) <= 32:
        try:
            parse_tei_embed(sent)
            parsed = True
        except EmbedServeError:
            parsed = False
        assert parsed == accepted


@pytest.mark.parametrize(
    ("schema_name", "full", "over"),
    [
        ("TokenizeRequest", {"inputs": ["a"] * 32}, {"inputs": ["a"] * 33}),
        ("DecodeRequest", {"ids": [[1]] * 32}, {"ids": [[1]] * 33}),
        ("DecodeRequest", {"ids": [1] * 33}, None),  # one list of ids is one input, however long
    ],
)
def test_tokenize_and_decode_document_the_batch_limit_their_handlers_enforce(
    schema_name: str, full: dict[str, Any], over: dict[str, Any] | None
):
    """Both check --max-client-batch-size (32 by default) like the queued routes; a schema without it made
    schemathesis send 34 texts the document allowed and the server refused."""
    validator = jsonschema.Draft202012Validator(document(app_for())["components"]["schemas"][schema_name])
    assert validator.is_valid(full)
    if over is not None:
        assert not validator.is_valid(over)


def test_the_error_table_gives_each_route_its_statuses_in_its_family_shape():
    paths = document(app_for())["paths"]
    embed = paths["/embed"]["post"]["responses"]
    types_422 = embed["422"]["content"]["application/json"]["schema"]["properties"]["error_type"]["enum"]
    assert "Validation" in types_422
    assert set(types_422) <= {cls.error_type for cls in ERROR_TABLE if cls.status == 422}
    assert embed["429"]["content"]["application/json"]["schema"]["properties"]["error_type"]["enum"] == [
        "Overloaded",
        "RateLimited",
    ]
    openai = paths["/v1/embeddings"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    codes = openai["properties"]["error"]["properties"]["code"]["enum"]
    assert {ValidationError.code, "unsupported_for_model", "response_too_large"} <= set(codes)
    assert set(codes) <= {cls.code for cls in ERROR_TABLE if cls.status == 422}
    for path in ("/", "/similarity", "/v2/rerank", "/v1/embeddings"):  # model work: admission and the queue
        assert {"429", "504"} <= set(paths[path]["post"]["responses"]), path
    assert "504" not in paths["/tokenize"]["post"]["responses"]  # the tokenizer answers it, not the queue
    health = paths["/health"]["get"]["responses"]
    assert set(health) == {"200", "408", "431", "500", "503"}  # no body, no key, no model: the table's "any" rows
    for item in paths.values():
        for operation in item.values():
            statuses = {int(status) for status in operation["responses"]} - {200}
            assert statuses <= {cls.status for cls in ERROR_TABLE}
            assert str(BackendError.status) in operation["responses"]


def test_every_error_of_the_table_is_documented_somewhere():
    assert set(SCOPES) <= set(ERROR_TABLE)
    paths = document(app_for(edge=EdgeSettings(api_key=("k",))))["paths"]
    documented = {
        (int(status), error_type)
        for path, item in paths.items()
        if not path.startswith("/v1/") and path != "/embeddings"  # TEI's shape names the error_type
        for operation in item.values()
        for status, response in operation["responses"].items()
        if status != "200"
        for error_type in response["content"]["application/json"]["schema"]["properties"]["error_type"]["enum"]
    }
    unrouted = {cls for cls, where in SCOPES.items() if where == "unrouted"}
    assert {(cls.status, cls.error_type) for cls in ERROR_TABLE if cls not in unrouted} <= documented


def test_routes_behind_the_key_require_it_in_the_document_when_keys_are_on():
    assert all("security" not in op for item in document(app_for())["paths"].values() for op in item.values())
    paths = document(app_for(edge=EdgeSettings(api_key=("k",))))["paths"]
    assert paths["/embed"]["post"]["security"] == [{"apiKey": []}]
    assert paths["/info"]["get"]["security"] == [{"apiKey": []}]
    assert "401" in paths["/embed"]["post"]["responses"]
    assert "security" not in paths["/health"]["get"]
    assert "security" not in paths["/metrics"]["get"]
    metrics_auth = document(app_for(edge=EdgeSettings(api_key=("k",), metrics_auth=True)))["paths"]
    assert metrics_auth["/metrics"]["get"]["security"] == [{"apiKey": []}]


def test_routes_no_served_model_can_answer_are_left_out():
    paths = set(document(app_for(kind="embedding"))["paths"])
    assert {"/embed", "/similarity", "/v1/embeddings", "/tokenize"} <= paths
    assert not {"/rerank", "/v1/rerank", "/v2/rerank", "/predict", "/embed_sparse"} & paths
    assert set(document(app_for(kind="rerank"))["paths"]) >= {"/rerank", "/v1/rerank", "/predict"}


def test_a_body_the_default_model_cannot_serve_must_name_a_model_that_can():
    models = (ModelSettings(model_id="a", served_model_name="embedder", kind="embedding"),
              ModelSettings(model_id="b", served_model_name="reranker", kind="rerank"),
              ModelSettings(model_id="c", served_model_name="classifier", kind="classify"))  # fmt: skip
    doc = document(create_app(Settings(models=models)))
    schemas = doc["components"]["schemas"]
    assert "model" not in schemas["EmbedRequest"]["required"]
    assert schemas["EmbedRequest"]["properties"]["model"]["anyOf"][0]["enum"] == ["embedder"]
    assert "model" in schemas["RerankRequest"]["required"]
    assert schemas["RerankRequest"]["properties"]["model"]["enum"] == ["reranker"]
    assert schemas["PredictRequest"]["properties"]["model"]["enum"] == ["reranker", "classifier"]
    # POST / answers as the model's kind: a reranker reranks there, so only the classifier takes /predict's body.
    root = doc["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    predict = next(body for body in root if body["description"].startswith("Classify"))
    assert predict["properties"]["model"]["enum"] == ["classifier"]


def test_every_route_whose_body_is_model_work_is_refused_from_the_request_head_under_a_flood():
    assert queued_paths(app_for().routes) == {
        "/", "/embed", "/embed_sparse", "/similarity", "/v1/embeddings", "/embeddings", "/rerank", "/v1/rerank",
        "/v2/rerank", "/predict",
    }  # fmt: skip
