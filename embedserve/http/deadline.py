"""A client's deadline for its answer, read from the request headers.

Two forms, whichever a client already sends:

* ``X-Request-Timeout-Ms: 250``: milliseconds, a plain positive number (fractions allowed);
* ``grpc-timeout: 250m``: gRPC's form, 1 to 8 digits and a unit (``H`` hours, ``M`` minutes, ``S`` seconds, ``m``
  milliseconds, ``u`` microseconds, ``n`` nanoseconds), as sent by gRPC-aware proxies and clients.

The deadline counts from the moment the handler has read the request body. Work whose deadline is predicted to pass
before it could start gets 504 at once; work whose deadline passes while it waits in the queue is dropped unrun, also
504. With both headers the shorter deadline wins.
"""

from __future__ import annotations

import math
import re
import time

from starlette.requests import Request

from embedserve.errors import ValidationError

TIMEOUT_MS_HEADER = "x-request-timeout-ms"
GRPC_TIMEOUT_HEADER = "grpc-timeout"

_GRPC_RE = re.compile(r"^([0-9]{1,8})([HMSmun])$")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def deadline(request: Request) -> float | None:
    """The ``time.perf_counter()`` time the client's deadline falls at, or None without one. 422 when malformed."""
    timeouts = [t for t in (_timeout_ms(request), _grpc_timeout(request)) if t is not None]
    if not timeouts:
        return None
    return time.perf_counter() + min(timeouts)


def _timeout_ms(request: Request) -> float | None:
    value = request.headers.get(TIMEOUT_MS_HEADER)
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms) or ms <= 0:
        raise ValidationError(
            f"header X-Request-Timeout-Ms must be a positive number of milliseconds, got {value[:40]!r}",
            param=TIMEOUT_MS_HEADER,
        )
    return ms / 1000.0


def _grpc_timeout(request: Request) -> float | None:
    value = request.headers.get(GRPC_TIMEOUT_HEADER)
    if value is None:
        return None
    match = _GRPC_RE.match(value.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValidationError(
            f"header grpc-timeout must be 1-8 digits and a unit (H, M, S, m, u, n), e.g. 250m; got {value[:40]!r}",
            param=GRPC_TIMEOUT_HEADER,
        )
    return int(match.group(1)) * _GRPC_UNITS[match.group(2)]
