"""WebSocket relay through the proxy: authorization, frames both ways, expiry and revocation."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from gateway.devissuer import DevIssuer
from gateway.http.websocket import CLOSE_REVOKED, CLOSE_TOKEN_EXPIRED, OpenSockets, SocketHandle
from tests.conftest import GatewayFactory, Running
from tests.proxy_support import Upstream


async def proxied(make_gateway: GatewayFactory, upstream: Upstream,
                  config: dict[str, Any] | None = None) -> Running:
    return await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url}, config=config)


async def test_websocket_echo_through_the_gateway(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    async with gw.client.ws_connect(
        "/ws", headers={"Authorization": f"Bearer {clerk.token()}", "X_User_Id": "evil"},
        protocols=("chat",), autoping=False,
    ) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hello")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "echo:hello"
        await ws.send_bytes(b"\x01\x02\x03")
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type is WSMsgType.BINARY and msg.data == b"\x03\x02\x01"
        await ws.ping(b"are-you-there")
        pong = await asyncio.wait_for(ws.receive(), 5)
        assert pong.type is WSMsgType.PONG and pong.data == b"are-you-there"
        await ws.send_str("close:4005")
        closing = await asyncio.wait_for(ws.receive(), 5)
        assert closing.type is WSMsgType.CLOSE
        assert closing.data == 4005  # the upstream's close code is relayed
    seen = upstream.seen[-1]
    assert seen.values("X-User-Id") == ["user_2demo"]
    assert seen.normalised("X-User-Id") == ["user_2demo"]
    for _ in range(50):
        if not len(gw.gateway.sockets):
            break
        await asyncio.sleep(0.05)
    assert len(gw.gateway.sockets) == 0


async def test_client_close_code_reaches_the_upstream(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    ws = await gw.client.ws_connect("/ws", headers={"Authorization": f"Bearer {clerk.token()}"})
    await ws.send_str("x")
    await asyncio.wait_for(ws.receive(), 5)
    await ws.close(code=4321)
    for _ in range(50):
        if upstream.ws_closed:
            break
        await asyncio.sleep(0.05)
    assert upstream.ws_closed == [4321]


async def test_websocket_without_a_token_is_refused_before_the_upgrade(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await gw.client.ws_connect("/ws")
    assert caught.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as bad:
        await gw.client.ws_connect("/ws", params={"__clerk_token": "not.a.token"})
    assert bad.value.status == 401
    assert upstream.ws_queries == []


async def test_token_in_query_parameter_opens_the_socket_and_is_stripped(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    token = clerk.token(sub="user_q")
    async with gw.client.ws_connect(
        "/ws", params={"room": "7", "__clerk_token": token}) as ws:
        await ws.send_str("q")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "echo:q"
    assert upstream.ws_queries == ["room=7"]
    assert token not in upstream.seen[-1].path_qs
    assert upstream.seen[-1].values("X-User-Id") == ["user_q"]


async def test_query_parameter_name_is_configurable_and_can_be_disabled(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, config={"proxy": {"websocket_query_token": None}})
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await gw.client.ws_connect("/ws", params={"__clerk_token": clerk.token()})
    assert caught.value.status == 401
    gw2 = await proxied(make_gateway, upstream, config={"proxy": {"websocket_query_token": "t"}})
    async with gw2.client.ws_connect("/ws", params={"t": clerk.token()}) as ws:
        await ws.send_str("ok")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "echo:ok"


async def test_socket_is_closed_when_the_opening_token_expires(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, config={"verification": {"leeway_seconds": 0}})
    token = clerk.token(lifetime=2)
    async with gw.client.ws_connect("/ws", params={"__clerk_token": token}) as ws:
        await ws.send_str("still valid")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "echo:still valid"
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == CLOSE_TOKEN_EXPIRED
        assert msg.extra == "token expired"
    for _ in range(50):
        if upstream.ws_closed:
            break
        await asyncio.sleep(0.05)
    assert upstream.ws_closed == [1001]


async def test_expiry_close_can_be_turned_off(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, config={
        "verification": {"leeway_seconds": 0}, "proxy": {"websocket_close_on_expiry": False}})
    async with gw.client.ws_connect("/ws", params={"__clerk_token": clerk.token(lifetime=1)}) as ws:
        await asyncio.sleep(2.2)
        await ws.send_str("later")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "echo:later"


async def test_revocation_hook_closes_the_sessions_sockets(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    mine = await gw.client.ws_connect(
        "/ws", headers={"Authorization": f"Bearer {clerk.token(sid='sess_a', sub='user_a')}"})
    other = await gw.client.ws_connect(
        "/ws", headers={"Authorization": f"Bearer {clerk.token(sid='sess_b', sub='user_b')}"})
    assert len(gw.gateway.sockets) == 2
    assert gw.gateway.sockets.close_session("sess_a") == 1
    msg = await asyncio.wait_for(mine.receive(), 5)
    assert msg.type is WSMsgType.CLOSE and msg.data == CLOSE_REVOKED
    await other.send_str("alive")
    assert (await asyncio.wait_for(other.receive(), 5)).data == "echo:alive"
    assert gw.gateway.sockets.close_user("user_b") == 1
    assert (await asyncio.wait_for(other.receive(), 5)).data == CLOSE_REVOKED
    await mine.close()
    await other.close()


async def test_unreachable_websocket_upstream_is_502_before_upgrade(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    from tests.conftest import free_port

    gw = await make_gateway(env={"GATEWAY_UPSTREAM": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await gw.client.ws_connect("/ws", headers={"Authorization": f"Bearer {clerk.token()}"})
    assert caught.value.status == 502


async def test_open_sockets_registry_indexes_and_forgets() -> None:
    sockets = OpenSockets()
    a, b = SocketHandle("sess_1", "user_1"), SocketHandle("sess_2", "user_1")
    sockets.add(a)
    sockets.add(b)
    assert sockets.close_user("user_1") == 2
    assert a.requested.result() == (CLOSE_REVOKED, "session revoked")
    sockets.remove(a)
    sockets.remove(b)
    assert len(sockets) == 0
    assert sockets.close_session("sess_1") == 0
    assert sockets.close_all() == 0


async def test_a_revocation_through_the_admin_api_closes_open_sockets(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url,
                                 "GATEWAY_ADMIN_TOKEN": "admin-token-for-tests"})
    revoked = await gw.client.ws_connect(
        "/ws", headers={"Authorization": f"Bearer {clerk.token(sid='sess_x', sub='user_x')}"})
    kept = await gw.client.ws_connect(
        "/ws", headers={"Authorization": f"Bearer {clerk.token(sid='sess_y', sub='user_y')}"})
    response = await gw.admin.post(
        "/admin/revocations", json={"kind": "session", "id": "sess_x"},
        headers={"Authorization": "Bearer admin-token-for-tests"})
    assert response.status in (200, 201), await response.text()
    msg = await asyncio.wait_for(revoked.receive(), 5)
    assert msg.type is WSMsgType.CLOSE and msg.data == CLOSE_REVOKED
    await kept.send_str("still here")
    assert (await asyncio.wait_for(kept.receive(), 5)).data == "echo:still here"
    # A new upgrade with the revoked session is refused before any socket opens.
    refused = await gw.client.get(
        "/ws", headers={"Authorization": f"Bearer {clerk.token(sid='sess_x', sub='user_x')}",
                        "Upgrade": "websocket", "Connection": "Upgrade",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                        "Sec-WebSocket-Version": "13"})
    assert refused.status == 401
    assert (await refused.json())["reason"] == "revoked"
    await kept.close()


@pytest.mark.parametrize("body", [
    {"kind": "organization", "id": "org_a"},
    {"kind": "membership", "org_id": "org_a", "user_id": "user_m"},
])
async def test_organization_and_membership_revocations_close_sockets(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, body: dict[str, str],
) -> None:
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url,
                                 "GATEWAY_ADMIN_TOKEN": "admin-token-for-tests"})
    member = await gw.client.ws_connect("/ws", headers={
        "Authorization": f"Bearer {clerk.token(sub='user_m', sid='sess_m', org_id='org_a')}"})
    outsider = await gw.client.ws_connect("/ws", headers={
        "Authorization": f"Bearer {clerk.token(sub='user_o', sid='sess_o', org_id='org_b')}"})
    response = await gw.admin.post("/admin/revocations", json=body,
                                   headers={"Authorization": "Bearer admin-token-for-tests"})
    assert response.status == 201, await response.text()
    msg = await asyncio.wait_for(member.receive(), 5)
    assert msg.type is WSMsgType.CLOSE and msg.data == CLOSE_REVOKED
    await outsider.send_str("other org")
    assert (await asyncio.wait_for(outsider.receive(), 5)).data == "echo:other org"
    await outsider.close()


async def test_a_token_revocation_closes_the_socket_it_opened(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url,
                                 "GATEWAY_ADMIN_TOKEN": "admin-token-for-tests"})
    ws = await gw.client.ws_connect("/ws", headers={
        "Authorization": f"Bearer {clerk.token(jti='jti_closing')}"})
    response = await gw.admin.post(
        "/admin/revocations", json={"kind": "token", "id": "jti_closing"},
        headers={"Authorization": "Bearer admin-token-for-tests"})
    assert response.status == 201
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type is WSMsgType.CLOSE and msg.data == CLOSE_REVOKED
