"""Request attacks through both doors: smuggling, forwarded-header spoofing, fuzzed paths,
and secrets that must never leave the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway, build_admin_app, build_public_app
from gateway.config import load_settings
from gateway.devissuer import DevIssuer
from gateway.http.guard import GuardedAppRunner
from gateway.server import public_runner
from tests.conftest import GatewayFactory, free_port
from tests.proxy_support import Upstream

ROUTES = {"routes": [
    {"name": "public", "path_prefix": "/public", "access": "public"},
    {"name": "admin", "path_prefix": "/admin", "require": {"role": "admin"}},
]}


async def send(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """One raw request on its own connection; everything the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def status_of(raw: bytes) -> int:
    return int(raw.split()[1]) if raw.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else 0


async def guarded(app: web.Application) -> tuple[GuardedAppRunner, int]:
    runner = GuardedAppRunner(app, head_timeout=5, realm="clerk-gateway", access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@pytest.fixture(params=["fast", "aiohttp"])
async def proxy_port(request: pytest.FixtureRequest, clerk: DevIssuer, upstream: Upstream,
                     tmp_path: Any) -> AsyncIterator[int]:
    """A proxy listener as `serve` runs it, through the fast door and through aiohttp's."""
    import yaml

    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**ROUTES, "proxy": {"fast_path": request.param == "fast"}}))
    gateway = Gateway(load_settings(
        {"CLERK_ISSUER": clerk.issuer, "GATEWAY_UPSTREAM": upstream.url}, str(path)))
    runner = public_runner(gateway)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


@pytest.mark.parametrize("raw", [
    b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4"
    b"\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n"
    b"abcdGET /admin HTTP/1.1\r\n\r\n",
    b"POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
])
async def test_request_smuggling_is_refused_before_the_upstream(
    proxy_port: int, upstream: Upstream, raw: bytes
) -> None:
    answer = await send(proxy_port, raw)
    assert status_of(answer) == 400
    assert b'"reason": "malformed_request"' in answer
    assert upstream.seen == []


async def test_forwarded_uri_from_a_client_cannot_change_the_rule_in_proxy_mode(
    clerk: DevIssuer, proxy_port: int, upstream: Upstream
) -> None:
    member = clerk.token(org_id="org_1", role="member")
    for header in ("X-Forwarded-Uri", "X-Original-URI", "X-Rewrite-URL", "X-Original-Url"):
        raw = (f"GET /admin/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {member}\r\n"
               f"{header}: /public/x\r\nConnection: close\r\n\r\n").encode()
        answer = await send(proxy_port, raw)
        assert status_of(answer) == 403, header
    assert upstream.seen == []
    raw = (b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Forwarded-Uri: /admin\r\n"
           b"Connection: close\r\n\r\n")
    assert status_of(await send(proxy_port, raw)) == 200
    assert [s.path_qs for s in upstream.seen] == ["/public/x"]


async def test_spoofed_identity_on_a_public_route_never_arrives(
    proxy_port: int, upstream: Upstream
) -> None:
    raw = (b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-User-Id: user_admin\r\n"
           b"x_org_id: org_victim\r\nX-ROLE: org:admin\r\nConnection: close, X-Request-Id\r\n"
           b"X-Request-Id: spoofed-request-0001\r\n\r\n")
    assert status_of(await send(proxy_port, raw)) == 200
    (seen,) = upstream.seen
    for name in ("X-User-Id", "X-Org-Id", "X-Role"):
        assert seen.normalised(name) == [], name
    assert seen.values("X-Request-Id") == ["spoofed-request-0001"]  # well-formed: kept


path_chars = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                            exclude_characters="?#"), max_size=40)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=path_chars, token=st.sampled_from(["", "garbage", "a.b.c", "e30.e30.e30"]))
async def test_fuzzed_paths_never_allow_without_a_token_and_never_500(
    proxy_port: int, upstream: Upstream, path: str, token: str
) -> None:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    raw = f"GET /{path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode()
    status = status_of(await send(proxy_port, raw))
    assert status not in (0, 500)
    # Without a valid token only the public route may pass, and only its paths arrive.
    assert all(s.path_qs == "/public" or s.path_qs.startswith("/public/")
               for s in upstream.seen)
    assert status != 200 or upstream.seen


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=path_chars)
async def test_fuzzed_forwarded_uris_never_500_through_forward_auth(
    clerk: DevIssuer, make_gateway: GatewayFactory, path: str
) -> None:
    gw = await make_gateway(config=ROUTES)
    response = await gw.client.get("/", headers={"X-Forwarded-Uri": "/" + path,
                                                 "Authorization": f"Bearer {clerk.token()}"})
    assert response.status in (200, 400, 403)
    if response.status != 200:
        assert (await response.json())["reason"]


async def test_secrets_never_leave_the_gateway(clerk: DevIssuer, aiohttp_client: Any) -> None:
    secrets = {
        "CLERK_SECRET_KEY": "sk_test_SECRET_bapi_0001",
        "GATEWAY_ADMIN_TOKEN": "admin_SECRET_token_0002",
        "CLERK_WEBHOOK_SIGNING_SECRET": "whsec_U0VDUkVUX3dlYmhvb2tfMDAwMw==",
    }
    gateway = Gateway(load_settings({"CLERK_ISSUER": clerk.issuer,
                                     "CLERK_JWKS_URL": clerk.issuer + "/.well-known/jwks.json",
                                     **secrets}))
    public = await aiohttp_client(build_public_app(gateway))
    admin = await aiohttp_client(build_admin_app(gateway))
    seen = []
    for client, method, path, headers in (
        (public, "GET", "/", {"Authorization": "Bearer bad"}),
        (public, "POST", "/_gateway/webhooks/clerk", {"svix-id": "1", "svix-timestamp": "1",
                                                      "svix-signature": "v1,AAAA"}),
        (admin, "GET", "/admin/revocations", {"Authorization": "Bearer wrong"}),
        (admin, "POST", "/admin/revocations", {"Authorization": "Bearer wrong"}),
        (admin, "GET", "/metrics", {}),
        (admin, "GET", "/readyz", {}),
        (admin, "GET", "/healthz", {}),
    ):
        response = await client.request(method, path, headers=headers, data=b"{}")
        seen.append(f"{dict(response.headers)} {await response.text()}")
    everything = "\n".join(seen)
    for value in secrets.values():
        assert value not in everything
    assert "SECRET" not in everything
    assert "U0VDUkVU" not in everything
