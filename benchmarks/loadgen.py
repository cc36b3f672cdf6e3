"""The load generator: a minimal HTTP/1.1 keep-alive client over raw asyncio streams, in closed or open loop.

It runs inside worker processes (see ``run_worker``), apart from the orchestrating process, so that its own CPU use
stays small and visible. Request bytes are serialized by the caller before the timed phase; the hot path only writes
them, reads the status line and headers, and reads the body by Content-Length (or chunked framing) without parsing it.

Clocks: every timestamp is ``time.monotonic()``, which on Linux is the system-wide CLOCK_MONOTONIC, so the workers
and the orchestrator agree on when the warm-up and the timed phase start.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

Headers = dict[str, str]

# Pseudo statuses recorded next to real HTTP ones.
CONNECTION_ERROR = 0  # the connection failed or the response was malformed
UNFINISHED = -1  # still running when the grace period after the timed phase ran out
CLIENT_DROPPED = -2  # open loop only: the arrival found every allowed connection busy, so it was never sent

# A closed-loop user that gets an error or a 429 waits this long before its next request. Without it, a server that
# answers 429 in microseconds turns the user into a busy loop that measures the client more than the server.
ERROR_BACKOFF_S = 0.05


class ProtocolError(ConnectionError):
    """The server's response was not HTTP/1.1 the client understands."""


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """The complete bytes of one keep-alive POST with a JSON body."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    return head.encode("ascii") + body


@dataclass(frozen=True)
class ResponseHead:
    """What the client needs from a response's status line and headers."""

    status: int
    content_length: int | None
    chunked: bool
    close: bool
    captured: Headers = field(default_factory=dict)  # the headers asked for in ``parse_head``'s ``capture``


def parse_head(head: bytes, capture: tuple[str, ...] = ()) -> ResponseHead:
    """Parse a status line and headers (everything up to and including the blank line).

    ``capture``: lower-case header names whose (lower-cased) values to keep, e.g. ``retry-after``."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    close = parts[0] == "HTTP/1.0"
    captured: Headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            close = "close" in value
        elif name in capture:
            captured[name] = value
    return ResponseHead(status, length, chunked, close, captured)


class Connection:
    """One keep-alive connection; ``request`` sends pre-built bytes and returns the response status."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = 0
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        """Connect to ``host:port``."""
        # 1 MiB buffer limit: readuntil() needs only the headers, but a small limit would split large bodies
        # into many reads.
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def request(self, data: bytes, capture: tuple[str, ...] = ()) -> ResponseHead:
        """Send one request and read its whole response; returns its head (status, the ``capture`` headers)."""
        self.writer.write(data)
        await self.writer.drain()
        try:
            raw_head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("connection closed before the response") from exc
        head = parse_head(raw_head, capture)
        if head.chunked:
            await self._skip_chunked()
        elif head.content_length is not None:
            await self.reader.readexactly(head.content_length)
        elif head.status not in (204, 304) and head.status >= 200:
            # No framing: the body runs to the end of the connection.
            await self.reader.read()
            head = ResponseHead(head.status, 0, False, True, head.captured)
        self.used += 1
        if head.close:
            self.close()
        return head

    async def _skip_chunked(self) -> None:
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # the blank line after the last chunk (no trailers expected)
                return
            await self.reader.readexactly(size + 2)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self.closed:
            self.closed = True
            self.writer.close()


@dataclass(frozen=True)
class LoadSpec:
    """What one worker process does: closed loop when ``concurrency`` > 0, else open loop at ``rate``.

    Open-loop arrivals are Poisson, or evenly spaced with ``steady`` (a prober). ``capture``: response headers to
    record per request (``LoadResult.headers``)."""

    host: str
    port: int
    requests: list[bytes]
    start_at: float
    warmup_s: float
    duration_s: float
    grace_s: float
    concurrency: int = 0
    rate: float = 0.0
    max_connections: int = 512
    seed: int = 0
    offset: int = 0
    steady: bool = False
    capture: tuple[str, ...] = ()

    @property
    def t0(self) -> float:
        """Start of the timed phase."""
        return self.start_at + self.warmup_s

    @property
    def t1(self) -> float:
        """End of the timed phase: no request is sent after it."""
        return self.t0 + self.duration_s


@dataclass
class LoadResult:
    """One record per request: when it was sent (open loop: scheduled), when it ended, its status, which request."""

    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    plan: list[int] = field(default_factory=list)
    cpu_s: float = 0.0  # this process's CPU time during the timed phase
    max_lag_s: float = 0.0  # open loop: the latest an arrival was sent after its scheduled time
    connections: int = 0  # connections opened
    headers: dict[int, Headers] = field(default_factory=dict)  # record index -> the captured headers it got

    def add(self, sent: float, plan: int) -> int:
        """Record a request as unfinished; returns its record index for ``finish``."""
        self.sent.append(sent)
        self.done.append(math.nan)
        self.status.append(UNFINISHED)
        self.plan.append(plan)
        return len(self.sent) - 1

    def finish(self, index: int, status: int, headers: Headers | None = None) -> None:
        """Mark a record done now with ``status`` (and the captured headers of its response, if any)."""
        self.done[index] = time.monotonic()
        self.status[index] = status
        if headers:
            self.headers[index] = headers


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class _Client:
    """Shared state of one worker: the spec, the records, and the connection count."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.result = LoadResult()
        self.next_plan = spec.offset
        self.cleanups: list[Callable[[], None]] = []  # run once every request has ended

    def take_plan(self) -> int:
        index = self.next_plan % len(self.spec.requests)
        self.next_plan += 1
        return index

    async def connect(self) -> Connection:
        self.result.connections += 1
        return await Connection.open(self.spec.host, self.spec.port)

    async def send(self, conn: Connection | None, plan: int) -> tuple[Connection | None, int, Headers]:
        """Send on ``conn`` (or a new connection); returns the connection to reuse (None if it broke), the status
        and the captured headers."""
        data = self.spec.requests[plan]
        # A reused keep-alive connection may have been closed by the server's idle timeout just before the write;
        # that is retried once on a fresh connection and is not an error of the server under test.
        for attempt in range(2):
            reused = conn is not None and conn.used > 0
            try:
                if conn is None or conn.closed:
                    conn = await self.connect()
                head = await conn.request(data, self.spec.capture)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                if conn is not None:
                    conn.close()
                conn = None
                if reused and attempt == 0:
                    continue
                return None, CONNECTION_ERROR, {}
            return (None if conn.closed else conn), head.status, head.captured
        return None, CONNECTION_ERROR, {}


async def _closed_user(client: _Client, first_conn: Connection | None) -> None:
    spec = client.spec
    conn = first_conn
    try:
        while time.monotonic() < spec.t1:
            plan = client.take_plan()
            index = client.result.add(time.monotonic(), plan)
            conn, status, headers = await client.send(conn, plan)
            client.result.finish(index, status, headers)
            if status != 200:
                await asyncio.sleep(ERROR_BACKOFF_S)
    finally:
        if conn is not None:
            conn.close()


async def _run_closed(client: _Client) -> list[asyncio.Task[None]]:
    spec = client.spec
    # Connect before the start so that connection set-up is not part of the warm-up's first requests.
    conns: list[Connection | None] = []
    for _ in range(spec.concurrency):
        try:
            conns.append(await client.connect())
        except OSError:
            conns.append(None)
    await _sleep_until(spec.start_at)
    return [asyncio.create_task(_closed_user(client, conn)) for conn in conns]


class _OpenPool:
    """Idle keep-alive connections of the open loop, with a cap on how many may exist."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.idle: list[Connection] = []
        self.count = 0

    async def fire(self, conn: Connection | None, index: int, plan: int) -> None:
        try:
            conn, status, headers = await self.client.send(conn, plan)
        except asyncio.CancelledError:
            self.count -= 1
            raise
        self.client.result.finish(index, status, headers)
        if conn is None:
            self.count -= 1
        else:
            self.idle.append(conn)

    def close_all(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def _run_open(client: _Client) -> list[asyncio.Task[None]]:
    spec = client.spec
    rng = random.Random(spec.seed)
    pool = _OpenPool(client)
    tasks: list[asyncio.Task[None]] = []
    scheduled = spec.start_at
    await _sleep_until(spec.start_at)
    while True:
        # Poisson arrivals: exponential gaps, drawn independently of how the server is doing (open loop); a steady
        # prober's are even.
        scheduled += 1.0 / spec.rate if spec.steady else rng.expovariate(spec.rate)
        if scheduled >= spec.t1:
            break
        await _sleep_until(scheduled)
        client.result.max_lag_s = max(client.result.max_lag_s, time.monotonic() - scheduled)
        plan = client.take_plan()
        # Latency counts from the scheduled arrival, so a late send is charged to the system, not hidden.
        index = client.result.add(scheduled, plan)
        conn: Connection | None = None
        if pool.idle:
            conn = pool.idle.pop()
        elif pool.count < spec.max_connections:
            pool.count += 1
        else:
            client.result.finish(index, CLIENT_DROPPED)
            continue
        tasks.append(asyncio.create_task(pool.fire(conn, index, plan)))
        if len(tasks) > 4096:
            tasks = [t for t in tasks if not t.done()]
    client.cleanups.append(pool.close_all)
    return tasks


async def _measure_cpu(client: _Client) -> None:
    await _sleep_until(client.spec.t0)
    begin = time.process_time()
    await _sleep_until(client.spec.t1)
    client.result.cpu_s = time.process_time() - begin


async def _drive(spec: LoadSpec) -> LoadResult:
    client = _Client(spec)
    cpu_task = asyncio.create_task(_measure_cpu(client))
    runner: Callable[[_Client], Coroutine[Any, Any, list[asyncio.Task[None]]]]
    runner = _run_closed if spec.concurrency > 0 else _run_open
    tasks = await runner(client)
    await cpu_task
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=max(0.0, spec.t1 + spec.grace_s - time.monotonic()))
        for task in still:
            task.cancel()
        for task in still:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    for cleanup in client.cleanups:
        cleanup()
    return client.result


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    # uvloop (installed with uvicorn[standard]) roughly halves the client's CPU per request.
    return uvloop.new_event_loop


def run_worker(spec: LoadSpec) -> LoadResult:
    """Entry point of a load worker process: run the spec to its end and return the records."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_drive(spec))


def ping() -> float:
    """No-op task used to start the worker processes before anything is timed."""
    return time.monotonic()
