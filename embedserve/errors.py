"""One error taxonomy, one status table, two body shapes.

Every failure a client can see is an :class:`EmbedServeError` subclass. The class decides the HTTP status, the TEI
``error_type`` and the OpenAI ``type``/``code``; the route family decides only the body shape:

* native (TEI) routes: ``{"error": "<message>", "error_type": "<Type>"}``
* ``/v1/*`` (OpenAI): ``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``

:class:`ModelLoadError` stands apart: it is raised at start-up, before any request, and is reported by the CLI and
``/info`` rather than rendered as a response, so it carries no status.

This module imports neither starlette nor torch, so the core and the engines can raise these errors freely.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar


class EmbedServeError(Exception):
    """Base of every client-visible error. Subclasses set the class attributes; instances carry the message."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "Backend"
    openai_type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None
    reason: ClassVar[str] = "error"
    """Label of ``embedserve_rejected_requests_total``: why the server refused the request."""

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = headers or {}


def retry_headers(seconds: float) -> dict[str, str]:
    """When to try again, ``seconds`` from now: ``Retry-After`` in whole seconds (at least 1, as HTTP has it) and
    ``Retry-After-Ms``, the same wait to the millisecond, which the OpenAI SDKs read before ``Retry-After``."""
    return {"Retry-After": str(max(1, math.ceil(seconds))), "Retry-After-Ms": str(max(1, math.ceil(seconds * 1000)))}


class EmptyInputError(EmbedServeError):
    """An empty ``inputs`` / ``input`` list or an empty string in it."""

    status = 400
    error_type = "Empty"
    openai_type = "invalid_request_error"
    code = "empty_input"
    reason = "validation"


class InvalidJSONError(EmbedServeError):
    """The body is not valid UTF-8 JSON."""

    status = 400
    error_type = "InvalidJson"
    openai_type = "invalid_request_error"
    code = "invalid_json"
    reason = "validation"


class UnauthorizedError(EmbedServeError):
    """Missing or unknown API key."""

    status = 401
    error_type = "Unauthorized"
    openai_type = "authentication_error"
    code = "invalid_api_key"
    reason = "unauthorized"


class RouteNotFoundError(EmbedServeError):
    """No route at this path."""

    status = 404
    error_type = "NotFound"
    openai_type = "invalid_request_error"
    code = "not_found"
    reason = "not_found"


class ModelNotFoundError(EmbedServeError):
    """The ``model`` field names no served model."""

    status = 404
    error_type = "ModelNotFound"
    openai_type = "invalid_request_error"
    code = "model_not_found"
    reason = "model_not_found"


class MethodNotAllowedError(EmbedServeError):
    """The route exists but not for this HTTP method."""

    status = 405
    error_type = "MethodNotAllowed"
    openai_type = "invalid_request_error"
    code = "method_not_allowed"
    reason = "not_found"


class PayloadTooLargeError(EmbedServeError):
    """The body is larger than ``--payload-limit``."""

    status = 413
    error_type = "PayloadTooLarge"
    openai_type = "invalid_request_error"
    code = "payload_too_large"
    reason = "payload_too_large"


class UnsupportedMediaTypeError(EmbedServeError):
    """A body sent with a content type other than JSON."""

    status = 415
    error_type = "UnsupportedMediaType"
    openai_type = "invalid_request_error"
    code = "unsupported_media_type"
    reason = "validation"


class ValidationError(EmbedServeError):
    """Well-formed JSON with a wrong value: types, ranges, too many or too long inputs, unknown prompt."""

    status = 422
    error_type = "Validation"
    openai_type = "invalid_request_error"
    code = "invalid_value"
    reason = "validation"


class CapabilityError(ValidationError):
    """The model cannot serve this route (for example ``dimensions`` beyond its size)."""

    code = "unsupported_for_model"


class ImageTooLargeError(EmbedServeError):
    """An image over ``--image-max-bytes``, sent inline or fetched (the fetch stops at the limit)."""

    status = 413
    error_type = "ImageTooLarge"
    openai_type = "invalid_request_error"
    code = "image_too_large"
    reason = "payload_too_large"


class InvalidImageError(EmbedServeError):
    """An image input that is not a usable image: bad base64 or data: URL, not an image, a format outside
    ``--image-formats``, a corrupt file, or more pixels than ``--image-max-pixels`` (a decompression bomb)."""

    status = 422
    error_type = "InvalidImage"
    openai_type = "invalid_request_error"
    code = "invalid_image"
    reason = "validation"


class ImageURLRefusedError(EmbedServeError):
    """An image URL the server will not fetch: a scheme other than https (http only with --image-fetch-allow-http),
    an address that is loopback, private, link-local, multicast, reserved or a metadata service (unless
    --image-fetch-allow names it), or too many redirects. Refused before any connection is made to it."""

    status = 422
    error_type = "ImageUrlRefused"
    openai_type = "invalid_request_error"
    code = "image_url_refused"
    reason = "validation"


class ImageFetchError(EmbedServeError):
    """An image URL that could not be fetched: no such host, no connection, a timeout, or an answer other than
    200. The message names which, never what the remote sent."""

    status = 422
    error_type = "ImageFetchFailed"
    openai_type = "invalid_request_error"
    code = "image_fetch_failed"
    reason = "validation"


class OverloadedError(EmbedServeError):
    """Admission is full: every slot of ``--max-concurrent-requests`` is taken."""

    status = 429
    error_type = "Overloaded"
    openai_type = "rate_limit_error"
    code = "overloaded"
    reason = "overloaded"


class RateLimitedError(EmbedServeError):
    """The caller's governor refused the request; ``Retry-After`` says when to try again."""

    status = 429
    error_type = "RateLimited"
    openai_type = "rate_limit_error"
    code = "rate_limited"
    reason = "rate_limited"


class UnhealthyError(EmbedServeError):
    """The model is loading, the server is draining, or the backend is dead."""

    status = 503
    error_type = "Unhealthy"
    openai_type = "server_error"
    code = "unavailable"
    reason = "unavailable"


class DeadlineExceededError(EmbedServeError):
    """The client's deadline (``X-Request-Timeout-Ms`` or ``grpc-timeout``) passed, or is predicted to pass, before
    its inputs could be computed; nothing more is computed for it."""

    status = 504
    error_type = "DeadlineExceeded"
    openai_type = "timeout_error"
    code = "deadline_exceeded"
    reason = "deadline"


class BackendError(EmbedServeError):
    """Inference failed. The message is generic; the details are in the server log under the request id."""

    status = 500
    error_type = "Backend"
    openai_type = "server_error"
    code = "internal_error"


class MalformedRequestError(EmbedServeError):
    """The request is not valid HTTP: a broken or lying chunked body, a garbled head. The connection closes after
    the answer (the parser cannot find the next request in what follows)."""

    status = 400
    error_type = "MalformedRequest"
    openai_type = "invalid_request_error"
    code = "malformed_request"
    reason = "malformed"


class RequestTimeoutError(EmbedServeError):
    """The request head (``--header-timeout``) or body (``--body-timeout``) did not arrive in time; the connection
    closes after the answer."""

    status = 408
    error_type = "RequestTimeout"
    openai_type = "invalid_request_error"
    code = "request_timeout"
    reason = "timeout"


class HeadersTooLargeError(EmbedServeError):
    """The request head is over ``--max-header-bytes`` or carries more than ``--max-headers`` fields."""

    status = 431
    error_type = "HeadersTooLarge"
    openai_type = "invalid_request_error"
    code = "headers_too_large"
    reason = "headers_too_large"


class ResponseTooLargeError(ValidationError):
    """The answer would be over ``--max-response-bytes`` (``/tokenize``, ``/decode``, ``/embed_sparse``, whose
    answers grow with the content sent, not with the settings); the message says how to ask for less."""

    code = "response_too_large"
    reason = "response_too_large"


class TooManyConnectionsError(EmbedServeError):
    """The connection is over ``--max-connections``: its first request gets this and the connection closes."""

    status = 503
    error_type = "Overloaded"
    openai_type = "server_error"
    code = "too_many_connections"
    reason = "connections"


class ModelLoadError(RuntimeError):
    """The model cannot be served as configured; the message says why and what to change.

    Not an :class:`EmbedServeError`: no client ever sees it as a response. Start-up fails with it (or, with
    --allow-partial-start, the model is reported as failed and its routes answer 503)."""


_STATUS_CLASSES: dict[int, type[EmbedServeError]] = {
    404: RouteNotFoundError,
    405: MethodNotAllowedError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
}


def from_http_status(status: int, detail: str) -> EmbedServeError:
    """Map a framework-level HTTP error (unknown route, wrong method) into the taxonomy."""
    cls = _STATUS_CLASSES.get(status)
    if cls is not None:
        return cls(detail)
    if 400 <= status < 500:
        return ValidationError(detail)
    return BackendError("internal error")


def render_tei(err: EmbedServeError) -> dict[str, Any]:
    """The flat TEI body."""
    return {"error": err.message, "error_type": err.error_type}


def render_openai(err: EmbedServeError) -> dict[str, Any]:
    """The OpenAI envelope."""
    return {"error": {"message": err.message, "type": err.openai_type, "param": err.param, "code": err.code}}


ERROR_TABLE: tuple[type[EmbedServeError], ...] = (
    EmptyInputError,
    InvalidJSONError,
    MalformedRequestError,
    UnauthorizedError,
    RouteNotFoundError,
    ModelNotFoundError,
    MethodNotAllowedError,
    RequestTimeoutError,
    PayloadTooLargeError,
    ImageTooLargeError,
    UnsupportedMediaTypeError,
    ValidationError,
    CapabilityError,
    ResponseTooLargeError,
    InvalidImageError,
    ImageURLRefusedError,
    ImageFetchError,
    OverloadedError,
    RateLimitedError,
    HeadersTooLargeError,
    UnhealthyError,
    TooManyConnectionsError,
    DeadlineExceededError,
    BackendError,
)
"""Every error class, in the order the README's table lists them."""
