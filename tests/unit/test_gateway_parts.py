"""The gateway's parts without processes: picking a replica, the client address behind trusted proxies, the
worker's gateway-token check, and the command's dispatch."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from starlette.requests import Request

from embedserve import cli
from embedserve.errors import UnauthorizedError
from embedserve.fleet import parse_fleet
from embedserve.gateway.app import client_address, create_gateway, gateway_token
from embedserve.gateway.client import WorkerClient
from embedserve.gateway.workers import Pool, Worker, Workers
from embedserve.http.keys import GatewayToken
from embedserve.settings import EdgeSettings, SettingsError

pytestmark = pytest.mark.unit

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


def request_from(peer: str, forwarded: list[str]) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (peer, 1234)})


def test_the_least_busy_live_replica_is_picked_and_equals_take_turns():
    pool = Pool("a", [Worker("a", "http://w1", live=True), Worker("a", "http://w2", live=True),
                      Worker("a", "http://w3", live=False)])  # fmt: skip
    assert {pool.pick().url for _ in range(4)} == {"http://w1", "http://w2"}  # round-robin, never the dead one
    pool.workers[0].in_flight = 3
    assert [pool.pick().url for _ in range(3)] == ["http://w2"] * 3
    assert pool.pick(exclude={"http://w2"}).url == "http://w1"
    pool.workers[0].live = pool.workers[1].live = False
    assert pool.pick() is None


def test_forwarded_for_is_believed_only_from_a_trusted_proxy():
    assert client_address(request_from("203.0.113.9", ["1.2.3.4"]), TRUSTED) == "203.0.113.9"
    assert client_address(request_from("10.1.2.3", ["1.2.3.4"]), TRUSTED) == "1.2.3.4"
    # The left-most entries are the client's own claims: the right-most untrusted hop is the real client.
    assert client_address(request_from("10.1.2.3", ["6.6.6.6, 1.2.3.4", "10.9.9.9"]), TRUSTED) == "1.2.3.4"
    assert client_address(request_from("10.1.2.3", ["1.2.3.4"]), ()) == "10.1.2.3"


def test_a_worker_with_a_gateway_token_refuses_a_missing_or_wrong_one():
    token = GatewayToken(EdgeSettings(gateway_token="s3cret"))
    assert token.enabled
    token.check("s3cret")
    for presented in (None, "", "s3cre", "s3cret2"):
        with pytest.raises(UnauthorizedError):
            token.check(presented)
    open_worker = GatewayToken(EdgeSettings())
    assert not open_worker.enabled
    open_worker.check(None)


def test_the_gateway_token_comes_from_a_file_or_the_environment(tmp_path):
    (tmp_path / "token").write_text("\n  from-file  \n")
    assert GatewayToken(EdgeSettings(gateway_token_file=str(tmp_path / "token"))).enabled
    with_file = parse_fleet({"gateway": {"token_file": str(tmp_path / "token")}, "models": [{"name": "a",
                             "model_id": "m"}]})  # fmt: skip
    assert gateway_token(with_file, {"EMBEDSERVE_GATEWAY_TOKEN": "env"}) == "from-file"
    without = parse_fleet({"models": [{"name": "a", "model_id": "m"}]})
    assert gateway_token(without, {"EMBEDSERVE_GATEWAY_TOKEN": "env"}) == "env"
    assert gateway_token(without, {}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SettingsError, match="empty"):
        GatewayToken(EdgeSettings(gateway_token_file=str(tmp_path / "empty")))
    with pytest.raises(SettingsError, match="exclusive"):
        EdgeSettings(gateway_token="x", gateway_token_file=str(tmp_path / "token")).check()


def test_a_failed_connection_marks_the_worker_down_until_its_health_answers():
    asyncio.run(_health_scenario())


async def _health_scenario() -> None:
    healthy = {"ok": False}

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=200 if healthy["ok"] else 503)

    app = web.Application()
    app.router.add_get("/health", answer)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        fleet = parse_fleet({"models": [{"name": "a", "model_id": "m", "urls": [url]}]})
        client = WorkerClient()
        workers = Workers(fleet, client)
        worker = workers.pool("a").workers[0]
        await workers.check(worker)
        assert not worker.live
        healthy["ok"] = True
        await workers.check(worker)
        assert worker.live
        workers.mark_down(worker)
        assert not worker.live  # at once, before the re-check answers
        await workers.close()
        await client.close()


def test_the_command_dispatches_gateway_and_needs_a_fleet_file(capsys, monkeypatch):
    monkeypatch.delenv("EMBEDSERVE_FLEET", raising=False)
    assert cli.main(["gateway"]) == 2
    assert "--fleet" in capsys.readouterr().err


def test_the_gateways_rate_limits_come_from_the_fleet_file():
    models = [{"name": "a", "model_id": "m", "urls": ["http://w1"]}]
    fleet = parse_fleet({"gateway": {"rate_limit_rps": 2, "rate_limit_burst": 1, "rate_limit_tpm": 600},
                         "models": models})  # fmt: skip
    assert (fleet.gateway.rate_limit_rps, fleet.gateway.rate_limit_burst, fleet.gateway.rate_limit_tpm) == (2.0, 1, 600)
    governor = create_gateway(fleet, environ={}).state.gateway.governor
    assert (governor.requests.rate, governor.requests.capacity, governor.tokens.capacity) == (2.0, 1, 600)
    off = create_gateway(parse_fleet({"gateway": {"rate_limit_rps": 0}, "models": models}), environ={})
    assert off.state.gateway.governor.requests is None
    for bad, message in (({"rate_limit_rps": -1}, "rate_limit_rps"), ({"rate_limit_burst": 0}, "rate_limit_burst"),
                         ({"rate_limit_rps": "fast"}, "rate_limit_rps")):  # fmt: skip
        with pytest.raises(SettingsError, match=message):
            parse_fleet({"gateway": bad, "models": models})


def test_the_gateway_counts_what_it_answered_and_the_live_workers_on_its_metrics():
    from starlette.testclient import TestClient

    fleet = parse_fleet({"models": [{"name": "a", "model_id": "m", "urls": ["http://127.0.0.1:1"]}]})
    with TestClient(create_gateway(fleet, environ={})) as client:
        assert client.post("/embed", json={"inputs": "x"}).status_code == 503  # its only worker is down
        assert client.post("/embed", json={"inputs": "x", "model": "zz"}).status_code == 404
        text = client.get("/metrics").text
    assert 'embedserve_gateway_requests_total{model="a",route="/embed",status="503"} 1.0' in text
    assert 'embedserve_gateway_requests_total{model="zz",route="/embed",status="404"} 1.0' in text
    assert 'embedserve_gateway_live_workers{model="a"} 0.0' in text
    assert 'embedserve_gateway_request_duration_seconds_count{model="a",route="/embed"} 1.0' in text
