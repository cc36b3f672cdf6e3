"""Cross-encoder routes: ``/rerank`` (TEI), ``/v1/rerank`` (Cohere v1/Jina shape), ``/v2/rerank`` (Cohere v2) and
``/predict`` (TEI classify)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedserve.core import tasks
from embedserve.core.capabilities import Capability
from embedserve.core.tasks import ScoreResult
from embedserve.http import answers
from embedserve.http.deadline import deadline
from embedserve.http.edge import endpoint
from embedserve.http.inference_api import parse_classification
from embedserve.http.priority import request_priority
from embedserve.http.routes.common import compute, read_body, resolve
from embedserve.http.scoring_schemas import RerankRequest, parse_cohere_rerank, parse_predict, parse_tei_rerank
from embedserve.http.web import json_response, request_id


async def _rerank(request: Request, parsed: RerankRequest, param: str) -> tuple[ScoreResult, dict[str, str], str]:
    """Score the query against each document; ``param`` is the documents' field on this route, for errors."""
    runtime = resolve(request, parsed.model)
    pairs: list[tuple[str, str | None]] = [(parsed.query, document) for document in parsed.documents]
    work = tasks.score(
        runtime, Capability.RERANK, pairs, truncate=parsed.truncate, direction=parsed.truncation_direction,
        raw=parsed.raw_scores, param=param, request_id=request_id(request), deadline=deadline(request),
        priority=request_priority(request),
    )  # fmt: skip
    characters = len(parsed.query) * len(pairs) + sum(map(len, parsed.documents))
    result, headers = await compute(request, work, len(pairs), characters)
    return result, headers, runtime.name


def _ranked(result: ScoreResult) -> list[tuple[int, float]]:
    """(document index, score), best first; ties keep the documents' order."""
    scores = result.scores[:, 0].tolist()
    return sorted(enumerate(scores), key=lambda item: -item[1])


@endpoint("/rerank", body=parse_tei_rerank, answer=answers.TEI_RANKING)
async def rerank(request: Request) -> Response:
    """``[{"index", "score", "text"?}, ...]`` sorted by score, best first."""
    return await answer_rerank(request, await read_body(request))


async def answer_rerank(request: Request, body: dict[str, Any]) -> Response:
    """``/rerank``'s answer to a body already read (``POST /`` shares it)."""
    parsed = parse_tei_rerank(body)
    result, headers, _ = await _rerank(request, parsed, "texts")
    ranks: list[dict[str, Any]] = []
    for index, score in _ranked(result):
        item: dict[str, Any] = {"index": index, "score": score}
        if parsed.return_documents:
            item["text"] = parsed.documents[index]
        ranks.append(item)
    return json_response(ranks, headers=headers)


@endpoint("/v1/rerank", body=parse_cohere_rerank, answer=answers.COHERE_RANKING)
async def rerank_v1(request: Request) -> Response:
    """``{"id", "results": [{"index", "relevance_score", "document"?: {"text"}}], "model", "usage"}``."""
    parsed = parse_cohere_rerank(await read_body(request))
    result, headers, name = await _rerank(request, parsed, "documents")
    ranked = _ranked(result)[: parsed.top_n]
    results: list[dict[str, Any]] = []
    for index, score in ranked:
        item: dict[str, Any] = {"index": index, "relevance_score": score}
        if parsed.return_documents:
            item["document"] = {"text": parsed.documents[index]}
        results.append(item)
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return json_response({"id": request_id(request), "results": results, "model": name, "usage": usage},
                         headers=headers)  # fmt: skip


@endpoint("/v2/rerank", body=parse_cohere_rerank, answer=answers.COHERE_V2_RANKING)
async def rerank_v2(request: Request) -> Response:
    """Cohere's v2 answer: ``{"id", "results": [{"index", "relevance_score"}], "meta"}``, best first. The request is
    v1's less ``return_documents``; ``max_tokens_per_doc`` is ignored (documents are cut at the model's input
    length, as ``truncate`` says)."""
    parsed = parse_cohere_rerank(await read_body(request))
    result, headers, _ = await _rerank(request, parsed, "documents")
    results = [{"index": index, "relevance_score": score} for index, score in _ranked(result)[: parsed.top_n]]
    meta = {"api_version": {"version": "2"}, "billed_units": {"input_tokens": result.prompt_tokens},
            "tokens": {"input_tokens": result.prompt_tokens}}  # fmt: skip
    return json_response({"id": request_id(request), "results": results, "meta": meta}, headers=headers)


@endpoint("/predict", body=parse_predict, answer=answers.PREDICTIONS)
async def predict(request: Request) -> Response:
    """``[{"score", "label"}, ...]`` sorted by score for one input; a list of those for a batch."""
    return await answer_predict(request, await read_body(request))


async def answer_predict(request: Request, body: dict[str, Any], *, inference_api: bool = False) -> Response:
    """``/predict``'s answer to a body already read. ``POST /`` shares it with ``inference_api``: there a body with the
    Inference API's ``parameters`` (huggingface_hub's ``text_classification``) gets that API's answer, one ranked list
    per input even for a single text, cut to ``top_k``, scored with ``function_to_apply``."""
    parsed, options = parse_classification(body) if inference_api else (parse_predict(body), None)
    function = options.function_to_apply if options else None
    runtime = resolve(request, parsed.model)
    work = tasks.score(
        runtime, Capability.CLASSIFY, parsed.inputs, truncate=parsed.truncate, direction=parsed.truncation_direction,
        raw=parsed.raw_scores, activation=function, param="inputs", request_id=request_id(request),
        deadline=deadline(request), priority=request_priority(request),
    )  # fmt: skip
    characters = sum(len(a) + len(b or "") for a, b in parsed.inputs)
    result, headers = await compute(request, work, len(parsed.inputs), characters)
    predictions = []
    for row in result.scores.tolist():
        labelled = [{"score": score, "label": label} for score, label in zip(row, result.labels, strict=True)]
        predictions.append(sorted(labelled, key=lambda item: -item["score"]))
    if options is not None:
        return json_response([ranked[: options.top_k] for ranked in predictions], headers=headers)
    return json_response(predictions if parsed.batched else predictions[0], headers=headers)


ROUTES = [
    Route("/rerank", rerank, methods=["POST"]),
    Route("/v1/rerank", rerank_v1, methods=["POST"]),
    Route("/v2/rerank", rerank_v2, methods=["POST"]),
    Route("/predict", predict, methods=["POST"]),
]
