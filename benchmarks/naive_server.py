"""The naive baseline: what a user typically writes first to serve embeddings.

One Starlette route that calls ``SentenceTransformer.encode`` on each request's texts in the thread pool, exactly as a
FastAPI ``def`` endpoint would, served by uvicorn, answering the OpenAI embeddings shape. No batching across requests,
no admission control.

    python benchmarks/naive_server.py --model PATH [--port 8000] [--host 127.0.0.1] [--name NAME]
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from sentence_transformers import SentenceTransformer
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def create_app(model_path: str, served_name: str) -> Starlette:
    """The app, with the model already loaded (uvicorn listens only after this returns)."""
    model = SentenceTransformer(model_path)

    async def embeddings(request: Request) -> JSONResponse:
        body: dict[str, Any] = await request.json()
        texts = body["input"]
        if isinstance(texts, str):
            texts = [texts]
        vectors = await run_in_threadpool(model.encode, texts)
        data = [{"object": "embedding", "index": i, "embedding": vector.tolist()} for i, vector in enumerate(vectors)]
        usage = {"prompt_tokens": 0, "total_tokens": 0}
        return JSONResponse({"object": "list", "data": data, "model": served_name, "usage": usage})

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": served_name, "object": "model"}]})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    routes = [
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def main() -> None:
    """Parse flags, load the model, serve."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local model directory (sentence-transformers layout)")
    parser.add_argument("--name", default="bench", help="served model name reported in responses")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app = create_app(args.model, args.name)
    # No access log, like the other servers in the benchmark: logging each request costs CPU on a 2-core machine.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
