"""The HTTP/1.1 connection layer: uvicorn's httptools protocol with the bounds uvicorn lacks.

uvicorn arms its keep-alive timer only after a response and cancels it on any byte, so nothing bounds how long a
client may take to send a request head (slowloris), a connection that never sends anything is held forever, and a
body that never completes holds its connection as long as the client likes. Nor does anything bound the size of a
head: httptools buffers a header value whole. :class:`EdgeProtocol` adds, per connection, one deadline at a time:

* ``head``: from the connection's opening (first request) or the first byte of a request (later ones) until its
  head is complete, ``--header-timeout``;
* ``body``: from the head until the body is complete, ``--body-timeout`` (the handler reading the body answers 408
  itself a little earlier; this closes connections whose body nobody reads);
* ``idle``: between requests, ``--keep-alive-timeout``; stray bytes (``\\r\\n``) do not reset it.

It counts head bytes as they arrive (past ``--max-header-bytes`` the head is refused before it is complete, so at
most the limit plus one read is ever buffered) and caps open connections (``--max-connections``).

Refusals are answered by the application, not here: the protocol hands the app a request whose scope carries the
refusal (:data:`STATE_KEY`), and :class:`embedserve.http.edge.HeadGuard` renders it as JSON in the route family's shape,
with metrics and an access line like any other answer. A connection that closes with input still unread lingers:
it stops writing, reads and drops what the client still sends for up to :data:`LINGER_SECONDS`, then closes, so the
client reads its answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from embedserve.errors import (
    EmbedServeError,
    HeadersTooLargeError,
    MalformedRequestError,
    RequestTimeoutError,
    TooManyConnectionsError,
)

log = logging.getLogger("embedserve.http")

STATE_KEY = "embedserve.request"
"""Scope key of the :class:`RequestState` the protocol shares with the application for each request."""
LINGER_SECONDS = 2.0
"""How long a closing connection with unread input keeps reading (and dropping) before it closes."""
BODY_GRACE_SECONDS = 1.0
"""The handler's own body deadline answers 408 first; the connection's closes a little later."""
CLOSE = {"connection": "close"}
_MAX_PATH = 2048

Phase = Literal["idle", "head", "body"]


@dataclass
class RequestState:
    """What the connection layer knows about one request, shared with the app through the scope."""

    rejection: EmbedServeError | None = None
    """Set when the connection layer refused the request: the app answers with this error and nothing else."""
    body_error: str | None = None
    """Set when the body turned out not to be valid HTTP (a broken chunk): the body reader answers 400."""


@dataclass(frozen=True)
class Limits:
    """The connection bounds, from the server settings."""

    header_timeout: float
    body_timeout: float
    keep_alive_timeout: float
    max_header_bytes: int
    max_connections: int
    """0: no cap."""


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head/body/idle deadlines, a head size bound and a connection cap."""

    limits: ClassVar[Limits]
    shedder: ClassVar[Any] = None
    """Optional: an object whose ``answer(method, target, headers)`` returns a complete response for a request to
    refuse as soon as its head is parsed (see :mod:`embedserve.http.shedding`), or None to serve it normally."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Phase = "idle"
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._head_bytes = 0
        self._body_bytes_fed = 0
        self._discarding = False  # after a refusal or a framing error: read and drop whatever comes
        self._shedding = False  # this request was answered from its head: its body is parsed and dropped
        self._overflow = False
        self._state = RequestState()
        self._closer = cast(asyncio.Transport, _LingeringTransport(self))

    # Connection life cycle

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        already_open = len(self.connections)
        super().connection_made(transport)
        cap = self.limits.max_connections
        if cap and already_open >= 2 * cap:
            _refused.note()
            transport.close()  # far over the cap: not even an answer
            return
        self._overflow = bool(cap) and already_open >= cap
        self._arm("head", self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._discarding = True
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, but what it cannot parse is answered in JSON through the app (uvicorn answers
        # plain text and logs a warning per bad request, which a hostile client could use to flood the log).
        if self._discarding:
            return
        self._unset_keepalive_if_required()
        self._body_bytes_fed = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade_ignored()
        except httptools.HttpParserError as exc:
            log.debug("unparsable input from %s: %s", self.client[0] if self.client else "-", exc)
            self._unparsable()
        if self._phase == "head" and not self._discarding:
            # What of this read is not the previous request's body belongs to the head now arriving.
            self._head_bytes += len(data) - self._body_bytes_fed
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(self._head_too_large())

    def _head_too_large(self) -> HeadersTooLargeError:
        return HeadersTooLargeError(
            f"the request head is over the {self.limits.max_header_bytes}-byte limit (--max-header-bytes); send "
            "shorter headers", headers=dict(CLOSE))  # fmt: skip

    def _unparsable(self) -> None:
        if self._phase == "body" and self.cycle is not None and not self.cycle.response_complete:
            # The app is handling this request and reads the body: end the body there, flagged, and the body
            # reader answers 400; then the connection closes (nothing after a broken chunk can be parsed).
            self._state.body_error = "the request body is not valid HTTP: broken chunked encoding"
            self._end_body()
        elif self._phase == "body":
            self._discarding = True
            self.close_lingering()  # the answer is out already
        else:
            self._refuse(MalformedRequestError("the request is not valid HTTP/1.1", headers=dict(CLOSE)))

    def _upgrade_ignored(self) -> None:
        """An ``Upgrade`` request (websocket, h2c): it was answered as plain HTTP/1.1, whose body parsing stops
        here; the connection closes after the answer."""
        if self.cycle is not None and not self.cycle.response_complete:
            self._end_body()
        else:
            self._discarding = True
            self.close_lingering()

    def _end_body(self) -> None:
        assert self.cycle is not None
        self._discarding = True
        self.cycle.keep_alive = False
        self.cycle.more_body = False
        self.cycle.message_event.set()

    # Parser callbacks (none acts once the connection is refusing: a read may hold more after the refusal)

    def on_message_begin(self) -> None:
        if self._discarding:
            return
        super().on_message_begin()
        self._phase = "head"
        self._head_bytes = 0
        self._state = RequestState()
        self.scope[STATE_KEY] = self._state  # type: ignore[literal-required]
        if self._timer_kind != "head":  # the first request's head deadline runs from the connection's opening
            self._arm("head", self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        if self._discarding:
            return
        # The exact head, for a head that came whole in one read (and before httptools' URL parser, which fails on
        # URLs over 64 KiB).
        size = len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse(self._head_too_large())
            return
        if self._shed():
            return
        if self._overflow:
            self._state.rejection = TooManyConnectionsError(
                "the server has no room for another connection (--max-connections); retry shortly",
                headers={"retry-after": "1", **CLOSE},
            )
        super().on_headers_complete()  # may raise on a head it cannot take (a non-ASCII path): still the head phase
        self._phase = "body"
        self._arm("body", self.limits.body_timeout + BODY_GRACE_SECONDS)
        if self.cycle is not None and self.cycle.scope is self.scope:
            self.cycle.transport = self._closer  # every close by the response lingers when input is unread

    def on_body(self, body: bytes) -> None:
        if self._discarding:
            return
        self._body_bytes_fed += len(body)
        if self._shedding:
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._discarding:
            return
        if self._shedding:
            self._shedding = False
            self._phase = "idle"
            self._arm("idle", self.limits.keep_alive_timeout)
            return
        super().on_message_complete()
        self._phase = "idle"
        if self.cycle is None or self.cycle.response_complete:
            self._arm("idle", self.limits.keep_alive_timeout)
        else:
            self._cancel()  # the app is working: no deadline of the connection's until it answers

    def on_response_complete(self) -> None:
        if self._discarding:
            self.pipeline.clear()  # closing: never start a queued request on a half-closed connection
        super().on_response_complete()
        if self.transport.is_closing() or self._discarding:
            return
        if self._phase == "idle" and (self.cycle is None or self.cycle.response_complete):
            self._arm("idle", self.limits.keep_alive_timeout)

    def _shed(self) -> bool:
        """Answer the request from its head when the shedder says so (only on an idle keep-alive connection, so the
        answer cannot overtake an earlier one); its body is then parsed and dropped."""
        if self.shedder is None or self._overflow or self.pipeline or not self.parser.should_keep_alive():
            return False
        if self.cycle is not None and not self.cycle.response_complete:
            return False
        answer = self.shedder.answer(self.parser.get_method(), self.url, self.headers)
        if answer is None:
            return False
        self.transport.write(answer)
        self._shedding = True
        self._phase = "body"
        self._arm("body", self.limits.body_timeout + BODY_GRACE_SECONDS)
        return True

    # Deadlines

    def _arm(self, kind: str, seconds: float) -> None:
        self._cancel()
        self._timer_kind = kind
        self._timer = self.loop.call_later(seconds, self._expired, kind)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_kind = ""

    def _expired(self, kind: str) -> None:
        self._timer = None
        self._timer_kind = ""
        if self.transport.is_closing():
            return
        if kind == "head" and self._phase == "head":
            self._refuse(RequestTimeoutError(
                f"the request head did not arrive within {self.limits.header_timeout:g} s (--header-timeout)",
                headers=dict(CLOSE)))  # fmt: skip
        elif kind == "body" and self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # the handler answers (408 from its own deadline), then we close
        else:
            self.close_lingering()  # idle, or nothing of a request yet, or a body nobody reads

    # Refusing and closing

    def _refuse(self, err: EmbedServeError) -> None:
        """Refuse the request whose head is arriving: stop parsing, let the app answer ``err``, then close."""
        self._discarding = True
        self._cancel()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # an earlier request is still being answered: close after it
            return
        log.debug("refused a request from %s: %s", self.client[0] if self.client else "-", err.message)
        scope = self._partial_scope()
        scope[STATE_KEY] = RequestState(rejection=err)
        cycle = RequestResponseCycle(
            scope=scope,  # type: ignore[arg-type]
            transport=self._closer,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=False,
            on_response=self.on_response_complete,
        )
        cycle.more_body = False
        self.cycle = cycle
        task = self.loop.create_task(cycle.run_asgi(self.app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _partial_scope(self) -> dict[str, Any]:
        """A scope from what arrived of the head: the method and path once the request line was read."""
        url: bytes = getattr(self, "url", b"") or b""
        method = self.parser.get_method().decode("ascii", "replace") if url and self.parser is not None else "-"
        raw_path, _, query = url.partition(b"?")
        path = raw_path[:_MAX_PATH].decode("latin-1") if raw_path.startswith(b"/") else "/"
        return {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "method": method,
            "path": path,
            "raw_path": raw_path[:_MAX_PATH],
            "query_string": query[:_MAX_PATH],
            "headers": list(self.headers or []) if self._phase == "head" else [],
            "state": self.app_state.copy(),
        }

    def close_lingering(self) -> None:
        """Close; when input may still be arriving, first stop writing and drop what comes for a while."""
        transport = self.transport
        if transport.is_closing():
            return
        if self._phase == "idle" and not self._discarding:
            transport.close()
            return
        self._discarding = True
        self._cancel()
        self.flow.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()  # the client sees our answer end; its EOF then closes the connection
        self._timer = self.loop.call_later(LINGER_SECONDS, transport.close)


class _LingeringTransport:
    """The transport as a response cycle sees it: ``close()`` becomes :meth:`EdgeProtocol.close_lingering`."""

    def __init__(self, protocol: EdgeProtocol) -> None:
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        self._protocol.transport.write(data)

    def is_closing(self) -> bool:
        return self._protocol.transport.is_closing()

    def close(self) -> None:
        self._protocol.close_lingering()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._protocol.transport.get_extra_info(name, default)


class _RefusedConnections:
    """Counts connections closed unanswered (far over the cap) and logs them at most every 10 s, not per connection."""

    def __init__(self) -> None:
        self.count = 0
        self._logged = 0.0

    def note(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._logged >= 10:
            log.warning("over twice --max-connections: closed %d new connection(s) unanswered", self.count)
            self._logged = now
            self.count = 0


_refused = _RefusedConnections()


def protocol_class(limits: Limits, shedder: Any = None) -> type[EdgeProtocol]:
    """An :class:`EdgeProtocol` bound to ``limits`` (and a shedder, if any), for ``uvicorn.Config(http=...)``."""
    return type("EdgeProtocol", (EdgeProtocol,), {"limits": limits, "shedder": shedder})
