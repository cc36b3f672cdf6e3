"""``POST /``: TEI's default route, the Hugging Face Inference API convention that huggingface_hub's
``InferenceClient(base_url=...)`` posts to. It answers as the route for the model's kind would: an embedding model
embeds (or, when ``inputs`` is ``{"source_sentence", "sentences"}``, gives sentence similarities, which TEI does only
under ``TASK=sentence-similarity``), a sparse model gives sparse vectors, a reranker reranks and a classifier
predicts. The model is the one the body's ``model`` names, else the default."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedserve.http import answers
from embedserve.http.edge import context, endpoint
from embedserve.http.inference_api import is_similarity, parse_classification, parse_similarity
from embedserve.http.routes.common import read_body
from embedserve.http.routes.scoring import answer_predict, answer_rerank
from embedserve.http.routes.tei import answer_embed, answer_similarity, answer_sparse
from embedserve.http.schemas import parse_sparse, parse_tei_embed
from embedserve.http.scoring_schemas import parse_tei_rerank


@endpoint(
    "/",
    body=(parse_tei_embed, parse_similarity, parse_sparse, parse_tei_rerank, parse_classification),
    answer=answers.ROOT,
)
async def root(request: Request) -> Response:
    """The answer of ``/embed``, ``/similarity``, ``/embed_sparse``, ``/rerank`` or ``/predict``, by the model's
    kind."""
    body = await read_body(request)
    name = body.get("model")
    # A model field of the wrong type is left to the route's own parser, which names it.
    runtime = context(request).registry.resolve(name if isinstance(name, str) else None)
    kind = runtime.info.kind if runtime.info else None  # not loaded yet: /embed answers 503 like any route
    if kind == "classify":
        return await answer_predict(request, body, inference_api=True)
    if kind == "rerank":
        return await answer_rerank(request, body)
    if kind == "sparse":
        return await answer_sparse(request, body)
    if is_similarity(body):
        return await answer_similarity(request, body)
    return await answer_embed(request, body)


ROUTES = [Route("/", root, methods=["POST"])]
