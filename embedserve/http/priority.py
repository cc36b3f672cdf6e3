"""A request's priority lane (see :mod:`embedserve.core.priority`), from the wire.

Three places can set it; the first that does wins:

1. the ``X-Priority`` header (a proxy or gateway can set it for its tenants, as NVIDIA Dynamo's
   ``x-dynamo-request-priority`` header overrides its body field);
2. the body's ``priority`` field, on every route whose work goes through the batch queue;
3. the API key's default, from the key file (``<key> priority=low``);

and otherwise ``normal``. A value is a lane name (``high``, ``normal``, ``low``; in any case in a header) or an
integer as vLLM's ``priority`` field takes it (lower runs earlier, 0 is the default): below 0 is ``high``, 0
``normal``, above 0 ``low``. Anything else is 422.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from embedserve.core.priority import Priority
from embedserve.errors import ValidationError
from embedserve.http.fields import Field, fixed, nullable

PRIORITY_HEADER = "x-priority"

_VALUES = frozenset(lane.value for lane in Priority)
_NAMES = ", ".join(repr(lane.value) for lane in Priority)


def parse_priority(value: Any, where: str, param: str, *, text: bool = True) -> Priority:
    """A lane name or a vLLM-style integer as a lane; 422 naming ``where`` otherwise. With ``text`` (a header, a
    key file: everything is a string there) names are read in any case and integers may be written as strings; a
    JSON body takes exactly what its schema says, a lower-case name or a JSON integer."""
    if isinstance(value, float) and value.is_integer():  # JSON has one number type: 1.0 is JSON Schema's integer 1
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return Priority.HIGH if value < 0 else Priority.NORMAL if value == 0 else Priority.LOW
    if isinstance(value, str) and not text and value in _VALUES:
        return Priority(value)
    if isinstance(value, str) and text:
        written = value.strip().lower()
        if written in _VALUES:
            return Priority(written)
        if written.lstrip("+-").isdigit():
            return parse_priority(int(written), where, param)
    raise ValidationError(
        f"{where} must be one of {_NAMES} or an integer (below 0: high, 0: normal, above 0: low), got {value!r:.40}",
        param=param,
    )


def body_priority(body: dict[str, Any]) -> Priority | None:
    """The body's ``priority`` field, or None when absent (or null)."""
    value = body.get("priority")
    return None if value is None else parse_priority(value, "`priority`", "priority", text=False)


PRIORITY = Field(
    "priority",
    body_priority,
    fixed(nullable({"anyOf": [{"type": "string", "enum": [lane.value for lane in Priority]}, {"type": "integer"}]})),
    "The request's lane: 'high' (interactive), 'normal' or 'low' (bulk work), or an integer as vLLM takes it (below "
    "0: high, 0: normal, above 0: low). Higher lanes run first and keep room in admission; an X-Priority header "
    "wins over it; absent, the API key's default, else normal.",
    attr=None,  # read by note_priority (below) for the handlers to pass to the core; the body's parse checks it
)


def header_priority(request: Request) -> Priority | None:
    """The ``X-Priority`` header's lane, or None without one. 422 when malformed."""
    value = request.headers.get(PRIORITY_HEADER)
    return None if value is None else parse_priority(value, "header X-Priority", PRIORITY_HEADER)


def note_priority(request: Request, body: dict[str, Any]) -> Priority:
    """Work out the request's lane once its body is read (``routes.common.read_body``) and keep it for
    :func:`request_priority`."""
    lane = header_priority(request) or body_priority(body) or key_priority(request)
    request.state.priority = lane
    return lane


def request_priority(request: Request) -> Priority:
    """The request's lane: as noted with its body, or before the body is read, the header's or the key's."""
    noted: Priority | None = getattr(request.state, "priority", None)
    return noted or header_priority(request) or key_priority(request)


def key_priority(request: Request) -> Priority:
    """The API key's default lane (noted by the edge), else normal."""
    found: Priority | None = getattr(request.state, "key_priority", None)
    return found or Priority.NORMAL
