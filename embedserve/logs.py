"""Logging set-up: human-readable lines, or one JSON object per line with ``--json-output``; the access log without
the health and metrics polls unless ``--access-log-polls``; :func:`step`, the progress lines of slow start-up work."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

_RESERVED = set(vars(logging.makeLogRecord({})))

ACCESS_LOGGER = "embedserve.access"
POLLED_ROUTES = frozenset({"/health", "/metrics"})
"""Routes that load balancers, orchestrators and Prometheus poll every few seconds: one line each would bury the API's
lines (151 of them while one script waited for a model to load). They are still counted in the metrics."""


class PollFilter(logging.Filter):
    """Drops the access-log lines of :data:`POLLED_ROUTES` (the ``route`` the access log records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "route", None) not in POLLED_ROUTES


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message, any ``extra=`` fields, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(*, json_output: bool, level: str, access_log_polls: bool = False) -> None:
    """Route embedserve's and uvicorn's logs to stderr in the chosen format; without ``access_log_polls``, leave
    the health and metrics polls out of the access log."""
    handler = logging.StreamHandler(sys.stderr)
    if json_output:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access = logging.getLogger(ACCESS_LOGGER)
    access.filters[:] = [f for f in access.filters if not isinstance(f, PollFilter)]
    if not access_log_polls:
        access.addFilter(PollFilter())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


HEARTBEAT_SECONDS = 5.0
"""How often a slow start-up step says it is still running."""

_steps: list[object] = []
_steps_lock = threading.Lock()


@contextlib.contextmanager
def step(logger: logging.Logger, message: str, *args: object, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Log ``message % args`` when a slow step starts (a download, an export, a check, the warm-up) and, while it
    runs, ``<message>: still running (N s)`` every ``every`` seconds, so that start-up is never silent for long;
    how long it took, at debug level, when it ends. Of nested steps only the innermost repeats itself."""
    text = message % args if args else message
    token = object()
    started = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            with _steps_lock:
                innermost = bool(_steps) and _steps[-1] is token
            if innermost:
                logger.info("%s: still running (%.0f s)", text, time.monotonic() - started)

    with _steps_lock:
        _steps.append(token)
    logger.info("%s", text)
    heartbeat = threading.Thread(target=beat, name="embedserve-progress", daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        done.set()
        with _steps_lock:
            _steps.remove(token)
        heartbeat.join()
        logger.debug("%s: took %.1f s", text, time.monotonic() - started)
