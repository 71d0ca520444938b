"""Property test: the proxy's fast door and its aiohttp door proxy any request alike.

Two gateways with the same settings, one with `proxy.fast_path: false`, each in front of its
own raw upstream that records the bytes it receives and answers with a generated (often
hostile) response: odd statuses and reason phrases, hop-by-hop headers and headers named in
`Connection`, spoofed request ids, bytes that are not UTF-8, bodies by length, chunked, until
close, truncated, large, or after a 204/304/HEAD, the app's own CORS headers. The same
generated request (methods, tokens in headers and cookies, spoofed identity headers in every
spelling, hop-by-hop and forwarded headers, bodies, CORS origins and preflights) goes to
both. The upstream must receive the same bytes, and the client the same status, reason,
headers (the date aside) and body, or both a cut-off answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.devissuer import DevIssuer
from gateway.http.fast_proxy import FastProxyDoor
from tests.conftest import GatewayFactory, Running
from tests.test_fast_door_parity import auth_lines, parity_tokens

ALLOWED_ORIGIN = "https://app.example.com"
ROUTES: dict[str, Any] = {"routes": [
    {"name": "public", "path_prefix": "/public", "access": "public"},
    {"name": "admin", "path_prefix": "/admin", "require": {"role": "admin"}},
    {"name": "maybe", "path_prefix": "/maybe", "access": "optional"},
], "cors": {"allowed_origins": [ALLOWED_ORIGIN],
            "routes": {"admin": {"allowed_methods": ["DELETE"], "allow_credentials": True}}}}
REQUEST_ID = "parity-request-id-0001"
_GENERATED_ID = re.compile(rb"\b[0-9a-f]{32}\b")


class RawUpstream(asyncio.Protocol):
    """One connection of the raw upstream: record a request, send the canned answer, close
    (or keep the connection for the next request, when the server says so)."""

    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.received = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.server.requests.append(b"<unparsable>" + bytes(self.received))
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        self.server.requests.append(bytes(self.received))
        self.received = bytearray()
        assert self.transport is not None
        head_only = self.parser.get_method() == b"HEAD"
        self.transport.write(self.server.answer(head_only))
        if not self.server.keep:
            self.transport.close()


@dataclass
class RawServer:
    """A raw HTTP upstream whose answer the test sets before each request."""

    requests: list[bytes] = field(default_factory=list)
    response: tuple[bytes, bytes] = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok")
    port: int = 0
    keep: bool = False  # keep connections open (the gateway pools them: its callback relay)

    def answer(self, head_only: bool) -> bytes:
        head, body = self.response
        return head if head_only else head + body


@dataclass
class Reply:
    """What a client got back: parsed by llhttp, the date aside."""

    status: int = 0
    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() != b"date":
            self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


async def send(port: int, raw: bytes, head_only: bool) -> Reply:
    """Send one request (it asks to close) and read the whole answer until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), 20)
    except ConnectionResetError:
        data = b""
    finally:
        writer.close()
    reply = Reply()
    parser = httptools.HttpResponseParser(reply)
    if head_only:
        data = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" if b"\r\n\r\n" in data else data
    with contextlib.suppress(httptools.HttpParserError):
        parser.feed_data(data)
    with contextlib.suppress(httptools.HttpParserError):
        reply.status = parser.get_status_code()
    if head_only and reply.status and data.endswith(b"\r\n\r\n"):
        reply.complete = True  # the head is the whole answer to HEAD
    return reply


@dataclass
class Pair:
    """The same proxy twice (fast door on, off), each with its own raw upstream."""

    fast: Running
    slow: Running
    fast_upstream: RawServer
    slow_upstream: RawServer
    tokens: dict[str, str]

    @staticmethod
    def port(running: Running) -> int:
        """The public listener's port."""
        port = running.client.server.port
        assert port is not None
        return port


@pytest.fixture
async def pair(clerk: DevIssuer, make_gateway: GatewayFactory) -> AsyncIterator[Pair]:
    """Two proxies (fast door on and off) that have verified the valid tokens already."""
    loop = asyncio.get_running_loop()
    upstreams, servers = [], []
    for _ in range(2):
        raw = RawServer()
        server = await loop.create_server(lambda raw=raw: RawUpstream(raw), "127.0.0.1", 0)
        raw.port = server.sockets[0].getsockname()[1]
        upstreams.append(raw)
        servers.append(server)
    fast = await make_gateway(env={"GATEWAY_UPSTREAM": f"http://127.0.0.1:{upstreams[0].port}"},
                              config=ROUTES)
    slow = await make_gateway(env={"GATEWAY_UPSTREAM": f"http://127.0.0.1:{upstreams[1].port}"},
                              config={**ROUTES, "proxy": {"fast_path": False}})
    tokens = parity_tokens(clerk)
    for running in (fast, slow):
        for token in tokens.values():
            await running.get("/maybe/warm", token)  # verified once
    try:
        yield Pair(fast, slow, upstreams[0], upstreams[1], tokens)
    finally:
        for server in servers:
            server.close()


targets = st.sampled_from(["/", "/admin", "/admin/x?y=1&z", "/public/a", "/maybe/b", "/x?q=%2F",
                           "/a/../admin", "/%61dmin", "/api/v1/items?page=2"])
request_options = st.fixed_dictionaries({}, optional={
    "auth": st.sampled_from(["member", "admin", "garbage", "two", "lowercase"]),
    "cookie": st.sampled_from(["member", "admin", "garbage", "other"]),
    "spoof": st.lists(st.sampled_from(["X-User-Id", "x-user-id", "X_User_Id", "X-USER_ID",
                                       "X-Org-Id", "X-Role", "X-Session-Id", "X-Real-IP",
                                       "Forwarded", "X-Forwarded-For", "X-Forwarded-Host",
                                       "X-Forwarded-Proto", "Proxy-Authorization"]),
                      max_size=4),
    "hop": st.lists(st.sampled_from(["Keep-Alive: timeout=5", "TE: trailers", "Trailer: X",
                                     "X-Drop: 1", "Proxy-Connection: keep-alive"]), max_size=3),
    "connection": st.sampled_from(["close, X-Drop", "X-Drop, close", "close, x_drop"]),
    "request_id": st.sampled_from([REQUEST_ID, "bad id"]),
    "body": st.binary(max_size=3000),
    "origin": st.sampled_from([ALLOWED_ORIGIN, "https://evil.example.com", "null",
                               ALLOWED_ORIGIN + "/"]),
    "preflight": st.sampled_from(["GET", "DELETE", "PURGE"]),
    "extra": st.lists(st.sampled_from(["Accept: */*", "User-Agent: parity", "X-Custom: a b",
                                       "x-custom: second", "Content-Type: text/plain"]),
                      max_size=3),
})
statuses = st.sampled_from([200, 201, 204, 301, 304, 400, 404, 418, 500, 502, 503])
reasons = st.sampled_from([b"OK", b"", b"Weird Reason", b"caf\xc3\xa9", b"bad \xff byte"])
answer_headers = st.lists(st.sampled_from([
    b"Content-Type: text/plain", b"Connection: X-Drop", b"X-Drop: 1", b"Keep-Alive: timeout=5",
    b"Set-Cookie: a=1", b"Set-Cookie: b=2", b"X-Request-Id: upstream-chosen-id",
    b"Server: upstream/1", b"Date: Mon, 01 Jan 2024 00:00:00 GMT", b"Proxy-Authenticate: Basic",
    b"Trailer: X-T", b"Upgrade: h2c", b"X-Bytes: \xff\xfe", b"X-Utf8: caf\xc3\xa9",
    b"Cache-Control: no-store", b"X-Empty:", b"X-Ctl: a\x7fb", b"X-Tab: a\tb",
    b"Access-Control-Allow-Origin: *", b"Vary: Accept-Encoding",
    b"access-control-allow-credentials: true",
]), max_size=5)
framings = st.sampled_from(["length", "chunked", "close", "short", "zero", "big", "big-chunked"])


def build_request(method: str, target: str, options: dict[str, Any],
                  tokens: dict[str, str]) -> bytes:
    """The raw request the options describe (it always asks to close after the answer)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: app.test"]
    lines += auth_lines(options.get("auth"), tokens)
    if "cookie" in options:
        lines.append(f"Cookie: theme=dark; __session={tokens.get(options['cookie'], 'x')}")
    lines += [f"{name}: spoofed" for name in options.get("spoof", [])]
    lines += options.get("hop", [])
    lines += options.get("extra", [])
    if "origin" in options:
        lines.append(f"Origin: {options['origin']}")
    if "preflight" in options:  # a CORS preflight when the method is OPTIONS
        lines.append(f"Access-Control-Request-Method: {options['preflight']}")
    lines.append(f"X-Request-Id: {options.get('request_id', REQUEST_ID)}")
    lines.append(f"Connection: {options.get('connection', 'close')}")
    body = options.get("body")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def build_answer(status: int, reason: bytes, headers: list[bytes], framing: str,
                 body: bytes) -> tuple[bytes, bytes]:
    """The upstream's raw answer: head and body as framed."""
    lines = [b"HTTP/1.1 %d %s" % (status, reason), *headers]
    if framing in ("big", "big-chunked"):
        body = body * (70_000 // max(1, len(body)) + 1) if body else b"x" * 70_000
    if framing in ("length", "big"):
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing in ("chunked", "big-chunked"):
        lines.append(b"Transfer-Encoding: chunked")
        half = len(body) // 2
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p)
        payload += b"0\r\n\r\n"
    elif framing == "short":
        lines.append(b"Content-Length: %d" % (len(body) + 10))
        payload = body
    elif framing == "zero":
        lines.append(b"Content-Length: 0")
        payload = b""
    else:  # close-delimited
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n", payload


def _ids(data: bytes) -> bytes:
    """Generated request ids (for a malformed client one) are random: compare them as one."""
    return _GENERATED_ID.sub(b"<generated-id>", data)


def assert_same(fast: Reply, slow: Reply, sent_fast: list[bytes], sent_slow: list[bytes],
                context: str) -> None:
    """Both doors sent the upstream the same bytes and the client the same answer."""
    assert [_ids(s) for s in sent_fast] == [_ids(s) for s in sent_slow], context
    assert (fast.status, fast.reason) == (slow.status, slow.reason), context
    assert (sorted((n, _ids(v)) for n, v in fast.headers)
            == sorted((n, _ids(v)) for n, v in slow.headers)), context
    assert fast.complete == slow.complete, context
    if fast.complete:
        assert _ids(fast.body) == _ids(slow.body), context


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
       target=targets, options=request_options, status=statuses, reason=reasons,
       headers=answer_headers, framing=framings, body=st.binary(max_size=2000),
       keep=st.booleans())
@example(method="OPTIONS", target="/admin/x", options={"origin": ALLOWED_ORIGIN,
                                                       "preflight": "DELETE"},
         status=200, reason=b"OK", headers=[], framing="length", body=b"",
         keep=False)  # answered: 204
@example(method="GET", target="/admin", options={"origin": ALLOWED_ORIGIN, "auth": "member"},
         status=200, reason=b"OK", headers=[], framing="length", body=b"",
         keep=True)  # refused, readable
@example(method="GET", target="/public/a", options={"origin": ALLOWED_ORIGIN},
         status=200, reason=b"OK", headers=[b"Access-Control-Allow-Origin: *",
                                            b"Vary: Accept-Encoding"],
         framing="length", body=b"ok", keep=True)  # relayed: the gateway's CORS headers
async def test_both_doors_proxy_alike(pair: Pair, method: str, target: str,
                                      options: dict[str, Any], status: int, reason: bytes,
                                      headers: list[bytes], framing: str, body: bytes,
                                      keep: bool) -> None:
    raw = build_request(method, target, options, pair.tokens)
    answer = build_answer(status, reason, headers, framing, body)
    replies = []
    sent = []
    # With a keep-alive upstream the fast door answers twice: the second answer may come from
    # its memo of upstream heads read whole (the first one's), and must not differ.
    runs = [(pair.fast, pair.fast_upstream), (pair.slow, pair.slow_upstream)]
    if keep:
        runs.insert(1, (pair.fast, pair.fast_upstream))
    for running, upstream in runs:
        upstream.keep = keep and framing not in ("close", "short")  # those end by closing
        if upstream.keep:  # a pooled connection waits for the request: the callback relay
            upstream.response = RawServer.response
            await send(pair.port(running), build_request("GET", "/maybe/pool", {}, {}), False)
        upstream.response = answer
        upstream.requests.clear()
        replies.append(await send(pair.port(running), raw, method == "HEAD"))
        sent.append(list(upstream.requests))
    context = f"{raw!r}\n{answer!r}"
    for fast, sent_fast in zip(replies[:-1], sent[:-1], strict=True):
        assert_same(fast, replies[-1], sent_fast, sent[-1], context)


async def test_the_property_exercises_the_fast_door(pair: Pair) -> None:
    """The generated shapes reach the fast door's no-I/O path, not only hand-overs, and with
    a keep-alive upstream its relay by callbacks."""
    door = pair.fast.client.server.runner.server._front  # type: ignore[union-attr]
    assert isinstance(door, FastProxyDoor)
    pair.fast_upstream.keep = True
    for _ in range(2):  # the first opens a connection, the second finds it pooled
        reply = await send(pair.port(pair.fast), build_request(
            "GET", "/admin/x", {"auth": "admin"}, pair.tokens), False)
        assert reply.status == 200 and reply.body == b"ok"
    assert door.callback_relays >= 1
    metrics = pair.fast.gateway.metrics
    registry = pair.fast.gateway.registry
    metrics.flush()
    before = registry.get_sample_value(
        "clerk_gateway_proxy_fast_path_total", {"result": "answered"}) or 0.0
    raw = build_request("POST", "/admin/x", {"auth": "admin", "body": b"abc"}, pair.tokens)
    reply = await send(pair.port(pair.fast), raw, False)
    assert reply.status == 200 and reply.body == b"ok"
    metrics.flush()
    assert registry.get_sample_value(
        "clerk_gateway_proxy_fast_path_total", {"result": "answered"}) == before + 1
    assert pair.fast_upstream.requests[-1].endswith(b"\r\n\r\nabc")
