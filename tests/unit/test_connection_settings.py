"""The connection bounds (timeouts, head limits, the connection cap, the answer bound): their defaults, flags and
variables, the values refused at start-up, and the uvicorn configuration they turn into."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette

from embedserve.cli import parse_settings
from embedserve.http.protocol import EdgeProtocol, Limits
from embedserve.http.server import uvicorn_config
from embedserve.settings import ServerSettings, Settings, SettingsError

pytestmark = pytest.mark.unit


def test_the_connection_bounds_default_to_finite_values():
    server = parse_settings([], {}).server
    assert (server.header_timeout, server.body_timeout, server.keep_alive_timeout) == (10.0, 30.0, 5.0)
    assert (server.max_header_bytes, server.max_headers) == (32768, 100)
    assert server.max_connections == 1024
    assert server.max_response_bytes == 4_000_000


def test_the_connection_bounds_come_from_flags_and_variables():
    env = {"EMBEDSERVE_MAX_CONNECTIONS": "0", "KEEP_ALIVE_TIMEOUT": "65", "MAX_HEADERS": "40"}
    flags = ["--body-timeout", "2.5", "--header-timeout", "3", "--max-header-bytes", "8192"]
    server = parse_settings(flags, env).server
    assert (server.body_timeout, server.header_timeout, server.keep_alive_timeout) == (2.5, 3.0, 65.0)
    assert (server.max_header_bytes, server.max_headers, server.max_connections) == (8192, 40, 0)


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"header_timeout": 0}, "--header-timeout"),
        ({"body_timeout": -1}, "--body-timeout"),
        ({"keep_alive_timeout": 0}, "--keep-alive-timeout"),
        ({"max_header_bytes": 100}, "--max-header-bytes"),
        ({"max_headers": 0}, "--max-headers"),
        ({"max_connections": -1}, "--max-connections"),
        ({"max_response_bytes": 0}, "--max-response-bytes"),
    ],
)
def test_bad_connection_bounds_name_the_flag_to_change(values, flag):
    with pytest.raises(SettingsError, match=flag):
        Settings(server=ServerSettings(**values)).check()


def test_the_server_runs_embedserves_protocol_with_the_settings_bounds():
    server = ServerSettings(port=3123, header_timeout=2, body_timeout=7, keep_alive_timeout=0.5,
                            max_header_bytes=2048, max_connections=9)  # fmt: skip
    config = uvicorn_config(Starlette(), Settings(server=server))
    assert isinstance(config.http, type)
    assert issubclass(config.http, EdgeProtocol)
    assert config.http.limits == Limits(header_timeout=2, body_timeout=7, keep_alive_timeout=0.5,
                                        max_header_bytes=2048, max_connections=9)  # fmt: skip
    assert config.port == 3123
    assert config.limit_concurrency is None  # uvicorn's cap answers plain text; the protocol's answers JSON
    assert config.timeout_keep_alive == 1  # uvicorn's own timer, whole seconds, backs up the protocol's 0.5 s
