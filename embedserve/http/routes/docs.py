"""The OpenAPI document (``/openapi.json``, and TEI's ``/api-doc/openapi.json``) and a Swagger UI page (``/docs``).

The document is behind the API key like ``/info`` (it lists the served models and limits). The page and its assets
are open: they are Swagger UI's static files, the same for every server, and a browser cannot send a bearer key when
it opens a page; with keys on, the page asks for one and sends it with the document's request and every "Try it
out". The assets come from the swagger-ui-bundle-v2 package and are served from here, so the page works offline.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # a folder path, untyped

from embedserve.errors import RouteNotFoundError
from embedserve.http.edge import endpoint
from embedserve.http.openapi import document
from embedserve.http.web import json_response

ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")
"""The files the page loads; nothing else of the package's folder is served."""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>embedserve API</title>
  <link rel="stylesheet" href="./docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="./docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui"></div>
<script src="./docs/swagger-ui-bundle.js"></script>
<script>
  // Relative links, so that the page also works behind a proxy that serves it under a prefix.
  // With --api-key on, the document itself needs the key: ask once, keep it for this tab, send it everywhere.
  const KEY = "embedserve-api-key";
  SwaggerUIBundle({
    url: "./openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    requestInterceptor: (request) => {
      const key = sessionStorage.getItem(KEY);
      if (key && !request.headers.Authorization) request.headers.Authorization = "Bearer " + key;
      return request;
    },
    responseInterceptor: (response) => {
      if (response.status === 401 && response.url.endsWith("openapi.json")) {
        const key = window.prompt("This server needs an API key:");
        if (key) { sessionStorage.setItem(KEY, key.trim()); window.location.reload(); }
      }
      return response;
    },
  });
</script>
</body>
</html>
"""


@endpoint("/openapi.json", listed=False)
async def openapi_json(request: Request) -> Response:
    """The OpenAPI 3.1 document of this server."""
    return json_response(document(request.app))


@endpoint("/docs", guard="open", listed=False)
async def docs(request: Request) -> Response:
    """Swagger UI on this server's document."""
    return HTMLResponse(PAGE)


@endpoint("/docs/{asset}", guard="open", listed=False)
async def asset(request: Request) -> Response:
    """One of Swagger UI's files."""
    name = request.path_params["asset"]
    if name not in ASSETS:
        raise RouteNotFoundError(f"no route for GET {request.url.path}")
    return FileResponse(Path(str(swagger_ui_path)) / name, headers={"cache-control": "public, max-age=86400"})


ROUTES = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/api-doc/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/docs/{asset}", asset, methods=["GET"]),
]
