"""The OpenAPI 3.1 document of this server, composed from the code that serves it.

Nothing here is a copy of the API: the paths and methods are the application's routes; each route's request body is
the :class:`~embedserve.http.fields.Body` its handler parses with, its answer the one its ``endpoint`` declaration
names; its error responses come from the error table (:data:`embedserve.errors.ERROR_TABLE`: status, TEI
``error_type``, OpenAI ``type`` and ``code``) by the scope of each error below, in the shape of the route's family.
What depends on what is served (model names, batch limit, embedding size, prompts, which routes the models can
answer, whether API keys are on) is read from the running server, so the document describes this server.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.routing import Route

from embedserve import __version__
from embedserve.core.capabilities import KIND_CAPABILITIES, Capability
from embedserve.core.registry import Registry
from embedserve.core.runtime import ModelRuntime
from embedserve.errors import (
    ERROR_TABLE,
    BackendError,
    CapabilityError,
    DeadlineExceededError,
    EmbedServeError,
    EmptyInputError,
    HeadersTooLargeError,
    InvalidJSONError,
    MalformedRequestError,
    MethodNotAllowedError,
    ModelNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestTimeoutError,
    ResponseTooLargeError,
    RouteNotFoundError,
    TooManyConnectionsError,
    UnauthorizedError,
    UnhealthyError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from embedserve.http.edge import OPERATIONS, AppContext, Operation
from embedserve.http.fields import Body, Served
from embedserve.http.keys import GATEWAY_TOKEN_HEADER
from embedserve.http.web import REQUEST_ID_HEADER, is_openai_path

Scope = Literal["any", "body", "auth", "key", "model", "queued", "unrouted"]

SCOPES: dict[type[EmbedServeError], Scope] = {
    EmptyInputError: "body",
    InvalidJSONError: "body",
    MalformedRequestError: "body",
    UnauthorizedError: "auth",
    RouteNotFoundError: "unrouted",
    ModelNotFoundError: "model",
    MethodNotAllowedError: "unrouted",
    RequestTimeoutError: "any",
    PayloadTooLargeError: "body",
    UnsupportedMediaTypeError: "body",
    ValidationError: "body",
    CapabilityError: "body",
    ResponseTooLargeError: "body",
    OverloadedError: "queued",
    RateLimitedError: "key",
    HeadersTooLargeError: "any",
    UnhealthyError: "model",
    TooManyConnectionsError: "any",
    DeadlineExceededError: "queued",
    BackendError: "any",
}
"""Which routes can answer each error of the table: ``any`` route; routes with a JSON ``body``; routes behind the
API key when ``auth`` is on; routes behind the API key (``key``: the per-key governor); routes that name a ``model``;
routes whose work is ``queued`` for the batcher; ``unrouted`` requests only (no route matched). A class of the table
not listed here (a new one) is documented on every route with a body when it is a 4xx, on every route when a 5xx."""


def scope(cls: type[EmbedServeError]) -> Scope:
    """Which routes can answer ``cls``."""
    return SCOPES.get(cls) or ("body" if cls.status < 500 else "any")


_PATH_PARAM = re.compile(r"{([^}:]+)(:[^}]*)?}")


def document(app: Starlette) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` as it is now (models loaded or not, keys on or off)."""
    ctx: AppContext = app.state.ctx
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for route in app.routes:
        if not isinstance(route, Route):
            continue
        op = OPERATIONS.get(route.endpoint)
        if op is None or not op.listed:
            continue
        # A route with several bodies (POST /) picks one by the model's kind, so each body is for the models whose
        # kind it is; a route with one body serves every model that has its capability.
        by_kind = len(op.body) > 1
        bodies: list[tuple[Body[Any], dict[str, Any]]] = []
        for body in op.body:
            served = served_by(ctx.registry, body.needs, by_kind=by_kind)
            if not served.models:
                continue  # no served model can answer it: it would refuse every request (422)
            if by_kind:
                bodies.append((body, body.schema(served)))
            else:
                components[body.name] = body.schema(served)
                bodies.append((body, {"$ref": f"#/components/schemas/{body.name}"}))
        if op.body and not bodies:
            continue
        path = _PATH_PARAM.sub(r"{\1}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(ctx, route, path, method, op, bodies)
    schemes: dict[str, Any] = {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "--api-key / --api-key-file"},
        "gatewayToken": {"type": "apiKey", "in": "header", "name": GATEWAY_TOKEN_HEADER,
                         "description": "a fleet worker's shared token, sent by its gateway"},
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "embedserve",
            "version": __version__,
            "description": "Embedding, reranking and classification inference: TEI's native routes and "
            "OpenAI/Cohere-compatible ones. Errors are JSON in TEI's shape on native routes and in OpenAI's on /v1/*.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items())), "securitySchemes": schemes},
    }


def served_by(registry: Registry, needs: Capability, *, by_kind: bool = False) -> Served:
    """What a body's schema depends on: the served models that can answer it (``by_kind``: whose kind's own work
    it is), their limits, sizes, prompts and vocabulary once loaded. A model whose kind is not known yet (loading,
    no --kind) counts as able."""
    runtimes = [runtime for runtime in registry.runtimes.values() if _answers(runtime, needs, by_kind)]
    dimensions: list[int] = []
    prompts: set[str] = set()
    vocabularies: list[int] = []
    for runtime in runtimes:
        info = runtime.info
        if info is not None:
            prompts.update(info.prompts)
            if info.dimensions:
                dimensions.append(info.dimensions)
        with contextlib.suppress(EmbedServeError):  # not ready (loading, failed): no tokenizer to ask
            vocabularies.append(runtime.require(Capability.TOKENIZE)[0].vocab_size)
    complete = all(runtime.info is not None for runtime in runtimes)
    return Served(
        models=tuple(runtime.name for runtime in runtimes),
        default_capable=registry.default in runtimes,
        max_client_batch_size=max((runtime.spec.max_client_batch_size for runtime in runtimes), default=1),
        max_dimensions=max(dimensions) if dimensions and complete else None,
        prompts=tuple(sorted(prompts)),
        vocab_size=min(vocabularies) if vocabularies and complete else None,
        capabilities=frozenset(c for runtime in runtimes for c in _capabilities(runtime)),
    )


def _capabilities(runtime: ModelRuntime) -> tuple[Capability, ...]:
    """What a model can do; everything while its kind is not known yet."""
    kind = runtime.info.kind if runtime.info else runtime.spec.kind
    return KIND_CAPABILITIES.get(kind or "") or tuple(Capability)


def _answers(runtime: ModelRuntime, needs: Capability, by_kind: bool) -> bool:
    kind = runtime.info.kind if runtime.info else runtime.spec.kind
    capabilities = KIND_CAPABILITIES.get(kind or "")
    if capabilities is None:
        return True
    return capabilities[0] == needs if by_kind else needs in capabilities


def _operation(
    ctx: AppContext,
    route: Route,
    path: str,
    method: str,
    op: Operation,
    bodies: list[tuple[Body[Any], dict[str, Any]]],
) -> dict[str, Any]:
    doc = (route.endpoint.__doc__ or "").strip()
    summary, _, description = doc.partition("\n")
    openai = is_openai_path(path)
    auth = _auth(ctx, op)
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', path).rstrip('_')}",
        "summary": summary.replace("``", "`"),
        "tags": [_tag(path)],
    }
    if description.strip():
        operation["description"] = description.strip().replace("``", "`")
    params = _PATH_PARAM.findall(route.path)
    if params:
        operation["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                   for name, _ in params]  # fmt: skip
    if bodies:
        schemas = [schema for _, schema in bodies]
        schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    responses: dict[str, Any] = {}
    if op.answer is not None:
        responses["200"] = {
            "description": op.answer.description.replace("``", "`"),
            "headers": _REQUEST_ID,
            "content": {op.answer.media_type: {"schema": op.answer.schema}},
        }
    scopes: set[Scope] = {"any"}
    if bodies:
        scopes.add("body")
    if auth:
        scopes.add("auth")
    if op.guard == "key":
        scopes.add("key")
    if any(field.key == "model" for body, _ in bodies for field in body.fields) or "model" in dict(params):
        scopes.add("model")
    if bodies and op.queued:
        scopes.add("queued")
    errors = [cls for cls in ERROR_TABLE if scope(cls) in scopes or cls in op.errors]
    for status in sorted({cls.status for cls in errors}):
        responses[str(status)] = _error_response([cls for cls in errors if cls.status == status], openai)
    operation["responses"] = responses
    if auth:
        operation["security"] = [{name: [] for name in auth}]
    return operation


def _auth(ctx: AppContext, op: Operation) -> list[str]:
    """The security schemes a route requires, all together."""
    schemes = []
    if op.guard == "key" and ctx.gateway_token is not None and ctx.gateway_token.enabled:
        schemes.append("gatewayToken")
    if ctx.keys.enabled and (op.guard == "key" or (op.guard == "metrics" and ctx.settings.edge.metrics_auth)):
        schemes.append("apiKey")
    return schemes


def _tag(path: str) -> str:
    if is_openai_path(path):
        return "OpenAI-compatible"
    if path in ("/health", "/info", "/metrics"):
        return "Service"
    return "Native (TEI)"


_REQUEST_ID = {
    REQUEST_ID_HEADER: {
        "description": "The request's id (the client's own when it sent a sane one); the server log's key.",
        "required": True,
        "schema": {"type": "string"},
    }
}


def _error_response(classes: list[type[EmbedServeError]], openai: bool) -> dict[str, Any]:
    """One status's errors, each named with its class's first docstring line, in the route family's shape."""
    names = [f"`{cls.code if openai else cls.error_type}`: {(cls.__doc__ or '').strip().splitlines()[0]}"
             for cls in classes]  # fmt: skip
    if openai:
        detail = {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"enum": sorted({cls.openai_type for cls in classes})},
                "param": {"type": ["string", "null"]},
                "code": {"enum": sorted({cls.code for cls in classes if cls.code is not None})},
            },
            "required": ["message", "type", "param", "code"],
        }
        schema: dict[str, Any] = {"type": "object", "properties": {"error": detail}, "required": ["error"]}
    else:
        schema = {
            "type": "object",
            "properties": {
                "error": {"type": "string"},
                "error_type": {"enum": sorted({c.error_type for c in classes})},
            },
            "required": ["error", "error_type"],
        }
    headers = dict(_REQUEST_ID)
    if any(cls.status == 429 for cls in classes):
        headers["retry-after"] = {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}
        headers["retry-after-ms"] = {
            "description": "The same wait in milliseconds (the OpenAI SDKs read it first).",
            "schema": {"type": "string"},
        }
    return {"description": "; ".join(dict.fromkeys(names)), "headers": headers,
            "content": {"application/json": {"schema": schema}}}  # fmt: skip
