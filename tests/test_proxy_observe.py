"""The proxy door is observed like forward-auth: access lines, request ids, latency, in-flight."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest

from gateway.devissuer import DevIssuer
from gateway.logs import JsonFormatter
from tests.conftest import GatewayFactory, Running, free_port
from tests.proxy_support import Upstream

ACCESS = "gateway.access"
FIELDS = ("request_id", "door", "route", "method", "status", "reason", "user", "org",
          "duration_ms", "upstream_status")
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


async def observed(make_gateway: GatewayFactory, upstream: Upstream) -> Running:
    """A proxy-mode gateway: /admin needs the admin role, /dead goes to a dead upstream."""
    return await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url}, config={"routes": [
        {"name": "admin", "path_prefix": "/admin", "require": {"role": "admin"}},
        {"name": "dead", "path_prefix": "/dead", "upstream": f"http://127.0.0.1:{free_port()}"},
    ]})


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access lines captured so far, as the fields the observer wrote."""
    return [{name: getattr(r, name) for name in FIELDS}
            for r in caplog.records if r.name == ACCESS]


def sample(gw: Running, name: str, **labels: str) -> float:
    return gw.gateway.registry.get_sample_value(name, labels) or 0.0


async def test_access_lines_and_metrics_after_a_known_sequence(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await observed(make_gateway, upstream)
    member = clerk.token(sub="user_m", org_id="org_1", org_slug="acme", role="member")
    expired = clerk.token(lifetime=-60)
    with caplog.at_level(logging.INFO, logger=ACCESS):
        allowed = await gw.get("/api/orders?page=2", member,
                               headers={"X-Request-Id": "req-client-0001"})
        assert allowed.status == 200
        anonymous = await gw.get("/api/orders")
        assert anonymous.status == 401
        refused = await gw.get("/admin/users", member, headers={"X-Request-Id": "bad id!"})
        assert refused.status == 403
        dead = await gw.get("/dead/x", member, headers={"X-Request-Id": "req-dead-0002"})
        assert dead.status == 502
        stale = await gw.get("/api/orders", expired)
        assert stale.status == 401
    # the client's well-formed id is used upstream and echoed; others are replaced
    assert allowed.headers["X-Request-Id"] == "req-client-0001"
    assert [s.values("X-Request-Id") for s in upstream.seen] == [["req-client-0001"]]
    generated = [anonymous.headers["X-Request-Id"], refused.headers["X-Request-Id"],
                 stale.headers["X-Request-Id"]]
    assert all(GENERATED_ID.match(rid) for rid in generated), generated
    assert len(set(generated)) == 3
    assert dead.headers["X-Request-Id"] == "req-dead-0002"
    assert (await dead.json())["request_id"] == "req-dead-0002"
    assert (await refused.json())["request_id"] == generated[1]

    got = lines(caplog)
    assert all(isinstance(line.pop("duration_ms"), float) for line in got)
    assert got == [
        {"request_id": "req-client-0001", "door": "proxy", "route": "default", "method": "GET",
         "status": 200, "reason": "ok", "user": "user_m", "org": "org_1",
         "upstream_status": 200},
        {"request_id": generated[0], "door": "proxy", "route": "default", "method": "GET",
         "status": 401, "reason": "missing_token", "user": None, "org": None,
         "upstream_status": None},
        {"request_id": generated[1], "door": "proxy", "route": "admin", "method": "GET",
         "status": 403, "reason": "missing_role", "user": "user_m", "org": "org_1",
         "upstream_status": None},
        {"request_id": "req-dead-0002", "door": "proxy", "route": "dead", "method": "GET",
         "status": 502, "reason": "upstream_unavailable", "user": "user_m", "org": "org_1",
         "upstream_status": None},
        {"request_id": generated[2], "door": "proxy", "route": "default", "method": "GET",
         "status": 401, "reason": "expired", "user": None, "org": None,
         "upstream_status": None},
    ]
    formatted = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for token in (member, expired):
        assert token not in formatted
        assert token.split(".")[2] not in formatted  # not even the signature

    durations = "clerk_gateway_request_duration_seconds_count"
    assert sample(gw, durations, door="proxy", route="default") == 3
    assert sample(gw, durations, door="proxy", route="admin") == 1
    assert sample(gw, durations, door="proxy", route="dead") == 1
    assert sample(gw, durations, door="forward_auth", route="default") == 0
    decisions = "clerk_gateway_decisions_total"
    assert sample(gw, decisions, door="proxy", route="default", outcome="allow",
                  reason="ok") == 1
    assert sample(gw, decisions, door="proxy", route="default", outcome="deny",
                  reason="missing_token") == 1
    assert sample(gw, decisions, door="proxy", route="default", outcome="deny",
                  reason="expired") == 1
    assert sample(gw, decisions, door="proxy", route="admin", outcome="deny",
                  reason="missing_role") == 1
    assert sample(gw, decisions, door="proxy", route="dead", outcome="allow",
                  reason="ok") == 1
    assert sample(gw, "clerk_gateway_in_flight_requests", door="proxy") == 0
    # metrics as scraped agree with the registry
    text = await (await gw.admin.get("/metrics")).text()
    assert ('clerk_gateway_request_duration_seconds_count{door="proxy",route="default"} 3.0'
            in text)


async def test_in_flight_counts_a_proxied_request_while_it_waits_for_the_upstream(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await observed(make_gateway, upstream)
    with caplog.at_level(logging.INFO, logger=ACCESS):
        pending = asyncio.ensure_future(gw.get("/slow?seconds=0.5", clerk.token()))
        for _ in range(200):
            if sample(gw, "clerk_gateway_in_flight_requests", door="proxy") == 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the request was never in flight")
        assert lines(caplog) == []  # the line is written when the answer is known
        response = await asyncio.wait_for(pending, 10)
        assert response.status == 200
    assert sample(gw, "clerk_gateway_in_flight_requests", door="proxy") == 0
    [line] = lines(caplog)
    assert (line["status"], line["upstream_status"], line["reason"]) == (200, 200, "ok")


async def test_oversize_body_is_logged_with_the_doors_own_reason(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url},
                            config={"proxy": {"max_body_bytes": 10}})
    with caplog.at_level(logging.INFO, logger=ACCESS):
        response = await gw.client.post("/upload", data=b"x" * 11,
                                        headers={"Authorization": f"Bearer {clerk.token()}"})
    assert response.status == 413
    [line] = lines(caplog)
    assert (line["status"], line["reason"], line["upstream_status"]) == (
        413, "body_too_large", None)
    assert line["request_id"] == response.headers["X-Request-Id"]


async def test_upstream_status_is_the_upstreams_own(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await observed(make_gateway, upstream)
    with caplog.at_level(logging.INFO, logger=ACCESS):
        response = await gw.get("/cookies", clerk.token())  # the upstream answers 202
        assert response.status == 202
        missing = await gw.get("/ws", clerk.token())  # a plain GET on a WebSocket route
    assert [(line["status"], line["upstream_status"]) for line in lines(caplog)] == [
        (202, 202), (missing.status, missing.status)]


async def _raw_upgrade(port: int, headers: dict[str, str]) -> tuple[
        int, dict[str, str], asyncio.StreamWriter]:
    """Send a WebSocket handshake by hand; returns the status, headers and the open socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines_ = ["GET /ws HTTP/1.1", "Host: gateway.test", "Upgrade: websocket",
              "Connection: Upgrade", "Sec-WebSocket-Version: 13",
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
              *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines_) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *rest = head.decode("latin-1").strip().split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
    return int(status_line.split()[1]), parsed, writer


async def test_websocket_upgrade_is_logged_once_when_decided(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await observed(make_gateway, upstream)
    port = gw.client.server.port
    assert port is not None
    token = clerk.token(sub="user_ws", org_id="org_9", role="member")
    with caplog.at_level(logging.INFO, logger=ACCESS):
        async with gw.client.ws_connect(
                "/ws", headers={"Authorization": f"Bearer {token}",
                                "X-Request-Id": "req-socket-0001"}) as ws:
            await ws.send_str("hi")
            assert (await asyncio.wait_for(ws.receive(), 5)).data == "echo:hi"
            # the line is written at the upgrade, while the socket is still open
            assert [(line["request_id"], line["status"], line["upstream_status"],
                     line["reason"], line["user"], line["org"], line["route"], line["door"])
                    for line in lines(caplog)] == [
                ("req-socket-0001", 101, 101, "ok", "user_ws", "org_9", "default", "proxy")]
            assert sample(gw, "clerk_gateway_in_flight_requests", door="proxy") == 0
            await ws.close()
        assert upstream.seen[-1].values("X-Request-Id") == ["req-socket-0001"]
        # the 101 itself carries the request id
        status, headers, writer = await _raw_upgrade(
            port, {"Authorization": f"Bearer {token}", "X-Request-Id": "req-socket-0002"})
        writer.close()
        assert status == 101
        assert headers["x-request-id"] == "req-socket-0002"
        # a refused upgrade: the deny status, and the id on the refusal
        status, headers, writer = await _raw_upgrade(port, {"X-Request-Id": "req-socket-0003"})
        writer.close()
        assert status == 401
        assert headers["x-request-id"] == "req-socket-0003"
        for _ in range(100):  # let the closed sockets' relays end
            if not len(gw.gateway.sockets):
                break
            await asyncio.sleep(0.02)
    got = [(line["request_id"], line["status"], line["upstream_status"], line["reason"])
           for line in lines(caplog)]
    assert got == [("req-socket-0001", 101, 101, "ok"), ("req-socket-0002", 101, 101, "ok"),
                   ("req-socket-0003", 401, None, "missing_token")]
    assert sample(gw, "clerk_gateway_request_duration_seconds_count",
                  door="proxy", route="default") == 3
    assert sample(gw, "clerk_gateway_in_flight_requests", door="proxy") == 0


async def test_websocket_to_a_dead_upstream_is_logged_as_502(
    clerk: DevIssuer, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": f"http://127.0.0.1:{free_port()}"})
    port = gw.client.server.port
    assert port is not None
    with caplog.at_level(logging.INFO, logger=ACCESS):
        status, headers, writer = await _raw_upgrade(
            port, {"Authorization": f"Bearer {clerk.token()}", "X-Request-Id": "req-ws-dead1"})
        writer.close()
    assert status == 502
    assert headers["x-request-id"] == "req-ws-dead1"
    [line] = lines(caplog)
    assert (line["status"], line["upstream_status"], line["reason"]) == (
        502, None, "upstream_unavailable")


async def test_access_log_off_still_counts_latency(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await observed(make_gateway, upstream)
    with caplog.at_level(logging.WARNING, logger=ACCESS):
        assert (await gw.get("/x", clerk.token())).status == 200
    assert lines(caplog) == []
    assert sample(gw, "clerk_gateway_request_duration_seconds_count",
                  door="proxy", route="default") == 1
