"""The fast doors' memo of request heads parsed whole (gateway/http/front.py, memo.py).

A keep-alive request head without a body that comes whole in one read, byte for byte one
parsed before, is not parsed again. These tests send generated requests again and again on
keep-alive connections through the proxy's fast door and require the same bytes upstream and
the same answers back as when the head was parsed; and that what is not such a head (a body,
`Connection: close`, a head split over reads) is parsed as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httptools
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import load_settings
from gateway.devissuer import DevIssuer
from gateway.http.fast_proxy import FastProxyDoor
from gateway.pipeline import RequestFacts, router_for
from tests.conftest import GatewayFactory, Running
from tests.proxy_support import Upstream
from tests.revocation_support import ADMIN_TOKEN, admin_headers
from tests.test_fast_door_parity import parity_tokens
from tests.test_fast_proxy_parity import (
    ROUTES,
    RawServer,
    RawUpstream,
    Reply,
    _ids,
    build_request,
    request_options,
    targets,
)


def door_of(running: Running) -> FastProxyDoor:
    door = running.client.server.runner.server._front  # type: ignore[union-attr]
    assert isinstance(door, FastProxyDoor)
    return door


async def on_one_connection(port: int, requests: list[bytes], head_only: bool,
                            pause: float = 0.0) -> list[Reply]:
    """Send each request after the answer to the one before, on one keep-alive connection
    (`pause`: between the two halves of each request, so that it comes in two reads)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    try:
        for raw in requests:
            if pause:
                writer.write(raw[:10])
                await asyncio.sleep(pause)
                writer.write(raw[10:])
            else:
                writer.write(raw)
            reply = Reply()
            parser = httptools.HttpResponseParser(reply)
            while not reply.complete:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    break
                if head_only and b"\r\n\r\n" in data:
                    parser.feed_data(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
                    reply.complete = True
                    break
                parser.feed_data(data)
            with contextlib.suppress(httptools.HttpParserError):
                reply.status = parser.get_status_code()
            if not reply.status:
                break  # the connection was closed: no answer
            replies.append(reply)
            if not reply.complete or (b"connection", b"close") in reply.headers:
                break  # (refused for good, by either door)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return replies


def keep_alive(raw: bytes) -> bytes:
    """The request without its `Connection` header (HTTP/1.1: kept alive)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Connection:")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture
async def proxied(clerk: DevIssuer, make_gateway: GatewayFactory
                  ) -> AsyncIterator[tuple[Running, RawServer, dict[str, str]]]:
    """A proxy (fast door) whose tokens are verified, before a keep-alive raw upstream."""
    raw = RawServer(keep=True)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawUpstream(raw), "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": f"http://127.0.0.1:{raw.port}"},
                            config=ROUTES)
    tokens = parity_tokens(clerk)
    for token in tokens.values():
        await gw.get("/maybe/warm", token)
    try:
        yield gw, raw, tokens
    finally:
        server.close()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "DELETE", "OPTIONS", "HEAD"]),
       target=targets, options=request_options)
async def test_a_request_head_from_the_memo_is_proxied_as_when_parsed(
    proxied: tuple[Running, RawServer, dict[str, str]], method: str, target: str,
    options: dict[str, Any]
) -> None:
    gw, upstream, tokens = proxied
    options = {k: v for k, v in options.items() if k != "connection"}
    raw = keep_alive(build_request(method, target, options, tokens))
    upstream.requests.clear()
    replies = await on_one_connection(gw.client.server.port or 0, [raw] * 3, method == "HEAD")
    first = replies[0]
    # (only a head aiohttp's parser refuses, answered 400 as HTTP/1.0, ends the connection)
    assert len(replies) == 3 or first.status == 400, raw
    for reply in replies[1:]:
        assert (reply.status, reply.reason, reply.complete) == (
            first.status, first.reason, first.complete), raw
        assert sorted((n, _ids(v)) for n, v in reply.headers) == sorted(
            (n, _ids(v)) for n, v in first.headers), raw
        assert _ids(reply.body) == _ids(first.body), raw
    sent = {_ids(request) for request in upstream.requests}
    assert len(sent) <= 1, raw  # the upstream got the same bytes each time it was asked


async def test_repeated_heads_come_from_the_memo(
    proxied: tuple[Running, RawServer, dict[str, str]]
) -> None:
    gw, upstream, tokens = proxied
    door = door_of(gw)
    raw = keep_alive(build_request("GET", "/admin/x", {"auth": "admin"}, tokens))
    hits = door.known.hits
    replies = await on_one_connection(gw.client.server.port or 0, [raw] * 4, False)
    assert [r.status for r in replies] == [200] * 4
    assert door.known.hits == hits + 3  # the first parsed, then three from the memo
    assert len({_ids(r) for r in upstream.requests[-4:]}) == 1


async def test_a_head_in_two_reads_a_body_or_a_close_is_parsed(
    proxied: tuple[Running, RawServer, dict[str, str]]
) -> None:
    gw, _, tokens = proxied
    door = door_of(gw)
    port = gw.client.server.port or 0
    plain = keep_alive(build_request("GET", "/admin/y", {"auth": "admin"}, tokens))
    with_body = keep_alive(build_request("POST", "/admin/y", {"auth": "admin", "body": b"abc"},
                                         tokens))
    closing = build_request("GET", "/admin/z", {"auth": "admin"}, tokens)
    hits = door.known.hits
    assert [r.status for r in await on_one_connection(port, [plain] * 3, False, 0.05)] == [200] * 3
    assert [r.status for r in await on_one_connection(port, [with_body] * 3, False)] == [200] * 3
    for _ in range(2):
        assert [r.status for r in await on_one_connection(port, [closing], False)] == [200]
    assert door.known.hits == hits


ANY_MEMBER = {"routes": [{"name": "area", "path_prefix": "/area"}]}
ADMINS_ONLY = {"routes": [{"name": "area", "path_prefix": "/area",
                           "require": {"role": "admin"}}]}


@pytest.mark.parametrize("door", ["forward_auth", "proxy"])
@pytest.mark.parametrize(("before", "after", "statuses"), [
    (ANY_MEMBER, ADMINS_ONLY, (200, 403)),  # a stricter rule applies to a known head at once
    (ADMINS_ONLY, ANY_MEMBER, (403, 200)),
])
async def test_a_reload_reroutes_a_known_head(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, tmp_path: Path,
    door: str, before: dict[str, Any], after: dict[str, Any], statuses: tuple[int, int]
) -> None:
    env = {"GATEWAY_UPSTREAM": upstream.url} if door == "proxy" else {}
    gw = await make_gateway(env=env, config=before)
    member = clerk.token(org_id="org_1", role="member")
    raw = (f"GET /area/x HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {member}\r\n"
           "\r\n").encode()
    port = gw.client.server.port or 0
    front = gw.client.server.runner.server._front  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async def ask() -> int:
            writer.write(raw)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            return int(head.split(b" ", 2)[1])

        assert [await ask() for _ in range(3)] == [statuses[0]] * 3
        hits = front.known.hits
        assert hits >= 2
        path = tmp_path / "after.yaml"
        path.write_text(yaml.safe_dump(after))
        result = await gw.gateway.reload(load_settings({"CLERK_ISSUER": clerk.issuer, **env},
                                                       str(path)))
        assert result.routes == 1
        assert [await ask() for _ in range(2)] == [statuses[1]] * 2
        assert front.known.hits == hits + 2  # the same known head, decided anew
    finally:
        writer.close()


async def test_a_located_token_is_kept_per_head_by_all_it_was_worked_out_from(
    make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    authorizer = gw.gateway.authorizer
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer a.b.c", "Host": "h"}))
    memo: dict[object, object] = {}

    def located(uri: str) -> object:
        return authorizer._locate(RequestFacts("forward_auth", "GET", uri, "h", headers,
                                               memo=memo))

    first, again, other = located("/one"), located("/one"), located("/two")
    assert again is first and other is not first
    assert (first.path, other.path) == ("/one", "/two")  # type: ignore[attr-defined]
    assert first.key == authorizer.verifier.cache_key("a.b.c")  # type: ignore[attr-defined]
    assert len(memo) == 2
    authorizer.router = router_for(gw.gateway.settings)  # as a reload does: worked out again
    assert located("/one") is not first


class _KeepAlive:
    """One keep-alive connection sending the same raw head again and again."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 raw: bytes) -> None:
        self.reader, self.writer, self.raw = reader, writer, raw

    async def ask(self) -> tuple[int, bytes]:
        """The status and body of one more answer to the same head."""
        self.writer.write(self.raw)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return int(head.split(b" ", 2)[1]), await self.reader.readexactly(length)


@pytest.mark.parametrize("door", ["forward_auth", "proxy"])
async def test_a_known_head_is_refused_once_its_user_is_revoked(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, door: str
) -> None:
    env = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    if door == "proxy":
        env["GATEWAY_UPSTREAM"] = upstream.url
    gw = await make_gateway(env=env, config={"revocation": {"local_ttl_seconds": 60}})
    token = clerk.token(sub="user_known", sid="sess_known", lifetime=600)
    raw = (f"GET /api/x HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n"
           "\r\n").encode()
    front = gw.client.server.runner.server._front  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.server.port)
    try:
        conn = _KeepAlive(reader, writer, raw)
        assert [(await conn.ask())[0] for _ in range(3)] == [200] * 3
        hits = front.known.hits
        added = await gw.admin.post("/admin/revocations",
                                    json={"kind": "user", "id": "user_known"},
                                    headers=admin_headers())
        assert added.status == 201
        status, body = await conn.ask()
        assert status == 401 and b'"revoked"' in body
        assert front.known.hits == hits + 1  # the known head, its decision made anew
    finally:
        writer.close()


async def deciding(gw: Running, token: str) -> Callable[[], Any]:
    """The token verified (cached) by one request; then a function deciding `GET /api/x`
    with it now, each time with the same facts' memo, as a known head's requests are."""
    assert (await gw.get("/api/x", token)).status == 200
    authorizer = gw.gateway.authorizer
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {token}", "Host": "h"}))
    memo: dict[object, object] = {}
    return lambda: authorizer.authorize_now(RequestFacts("forward_auth", "GET", "/api/x", "h",
                                                         headers, memo=memo))


async def test_a_known_heads_decision_is_kept_only_for_the_same_verification(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    token = clerk.token(sub="user_kept")
    decide = await deciding(gw, token)
    first = decide()
    assert first is not None and first.allowed
    assert decide() is first
    gw.gateway.verifier.cache.clear()  # a new verification: decided anew
    assert (await gw.get("/api/x", token)).status == 200
    again = decide()
    assert again is not first and again.allowed


async def test_each_request_of_a_known_head_gets_its_own_id_upstream(
    proxied: tuple[Running, RawServer, dict[str, str]]
) -> None:
    gw, upstream, tokens = proxied
    raw = (f"GET /admin/ids HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer "
           f"{tokens['admin']}\r\n\r\n").encode()
    handler = door_of(gw).handler
    hits = handler._heads.hits
    upstream.requests.clear()
    replies = await on_one_connection(gw.client.server.port or 0, [raw] * 3, False)
    assert [r.status for r in replies] == [200] * 3
    assert handler._heads.hits >= hits + 2  # the upstream head: cut once, then its id put in
    ids = [dict(line.split(b": ", 1) for line in r.split(b"\r\n")[1:] if b": " in line)
           [b"X-Request-Id"] for r in upstream.requests]
    assert len(set(ids)) == 3  # a new id for each request
    assert {r.replace(i, b"<id>") for r, i in zip(upstream.requests, ids, strict=True)} == {
        upstream.requests[0].replace(ids[0], b"<id>")}  # and nothing else differs
    for reply, rid in zip(replies, ids, strict=True):
        assert (b"x-request-id", rid) in reply.headers


async def test_with_assertions_a_kept_decision_follows_the_signers_assertion(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config={"assertion": {
        "enabled": True, "issuer": "https://gateway.test", "audience": "https://api.test"}})
    token = clerk.token(sub="user_asserted")
    signer = gw.gateway.authorizer.assertions
    assert signer is not None
    decide = await deciding(gw, token)
    first = decide()
    assert first.allowed and decide() is first  # the signer reuses its assertion: kept
    signer._cache.clear()  # the signer makes a new assertion: the decision carries it
    again = decide()
    assert again is not first and again.allowed
    assert again.headers is not first.headers and again.headers[:-1] == first.headers[:-1]
    assert decide() is again
