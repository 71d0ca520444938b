"""The upstream pool's memo of response heads llhttp read whole (gateway/http/upstream.py).

A response whose one read is exactly a head llhttp read whole before and that head's
Content-Length of body is answered without parsing it again. These tests hold that the answer
is byte for byte the parsed one, and that anything else (more bytes, fewer, a HEAD, a head
that differs) is parsed as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.devissuer import DevIssuer
from gateway.http.fast_proxy import FastProxyDoor
from gateway.http.upstream import KnownHead, KnownHeads, UpstreamPool
from tests.conftest import GatewayFactory, Running
from tests.test_fast_proxy_parity import (
    _ids,
    answer_headers,
    build_answer,
    reasons,
    send,
    statuses,
)

HEAD = (b"HTTP/1.1 200 Fine\r\nServer: upstream/1\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
        b"Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"X-Request-Id: upstream-chosen-id\r\nContent-Type: application/json\r\n"
        b"Content-Length: 11\r\n\r\n")
BODY = b'{"ok":true}'


@dataclass
class Scripted:
    """A keep-alive upstream that answers every request with the writes it is given (a pause
    between them, so that each arrives in a read of its own)."""

    writes: list[bytes] = field(default_factory=lambda: [HEAD + BODY])
    requests: int = 0
    port: int = 0


class _ScriptedConnection(asyncio.Protocol):
    def __init__(self, script: Scripted) -> None:
        self.script = script
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.script.requests += 1
        asyncio.get_running_loop().create_task(self._answer(list(self.script.writes)))

    async def _answer(self, writes: list[bytes]) -> None:
        for index, chunk in enumerate(writes):
            if index:
                await asyncio.sleep(0.05)
            assert self.transport is not None
            self.transport.write(chunk)


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    script = Scripted()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _ScriptedConnection(script), "127.0.0.1", 0)
    script.port = server.sockets[0].getsockname()[1]
    try:
        yield script
    finally:
        server.close()


def pool_of(running: Running) -> UpstreamPool:
    door = running.client.server.runner.server._front  # type: ignore[union-attr]
    assert isinstance(door, FastProxyDoor)
    pool = door.handler.pool
    assert pool is not None
    return pool


async def exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Send requests one after another on one keep-alive connection; each raw answer (read
    by its length: every answer here has one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if not request.startswith(b"HEAD "):
                head += await asyncio.wait_for(reader.readexactly(length), 10)
            answers.append(head)
    finally:
        writer.close()
    return answers


def get(token: str, method: str = "GET", rid: str = "client-id-0001") -> bytes:
    return (f"{method} /api/x HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n"
            f"X-Request-Id: {rid}\r\n\r\n").encode()


async def proxy(make_gateway: GatewayFactory, script: Scripted) -> Running:
    return await make_gateway(env={"GATEWAY_UPSTREAM": f"http://127.0.0.1:{script.port}"})


async def test_a_known_head_gives_the_parsed_answer_byte_for_byte(
    clerk: DevIssuer, make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    token = clerk.token()
    gw = await proxy(make_gateway, scripted)
    answers = await exchange(gw.client.server.port or 0, [get(token)] * 4)
    pool = pool_of(gw)
    # The first opens a connection (the task path), the second is parsed by llhttp on the
    # pooled one and remembered, the third and fourth come from the memo.
    assert pool.known.hits == 2
    assert answers[1] == answers[2] == answers[3]
    assert answers[1] == answers[0]
    head = answers[2]
    assert head.startswith(b"HTTP/1.1 200 Fine\r\n")
    assert b"X-Request-Id: client-id-0001\r\n" in head  # the client's id, not the upstream's
    assert b"upstream-chosen-id" not in head
    assert b"X-Drop" not in head and b"Keep-Alive" not in head  # hop-by-hop, listed: gone
    assert head.endswith(b"\r\n\r\n" + BODY)


async def test_each_request_gets_its_own_id_from_a_known_head(
    clerk: DevIssuer, make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    token = clerk.token()
    gw = await proxy(make_gateway, scripted)
    ids = [f"client-id-{n:04d}" for n in range(4)]
    answers = await exchange(gw.client.server.port or 0, [get(token, rid=i) for i in ids])
    assert pool_of(gw).known.hits == 2
    for rid, answer in zip(ids, answers, strict=True):
        assert answer.count(b"X-Request-Id: ") == 1
        assert f"X-Request-Id: {rid}\r\n".encode() in answer
    assert answers[3].replace(b"0003", b"0002") == answers[2]


async def remembered(clerk: DevIssuer, make_gateway: GatewayFactory,
                     scripted: Scripted) -> tuple[str, Running, int, list[bytes]]:
    """A proxy whose pool has just remembered the upstream's head (the first request opens
    the connection, the second is parsed on the pooled one): its token, port, two answers."""
    token = clerk.token()
    gw = await proxy(make_gateway, scripted)
    port = gw.client.server.port or 0
    answers = await exchange(port, [get(token)] * 2)
    assert pool_of(gw).known.hits == 0
    return token, gw, port, answers


async def test_bytes_after_the_body_are_parsed_and_the_connection_is_not_reused(
    clerk: DevIssuer, make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    token, gw, port, _ = await remembered(clerk, make_gateway, scripted)
    pool = pool_of(gw)
    scripted.writes = [HEAD + BODY + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
    answers = await exchange(port, [get(token)])
    assert pool.known.hits == 0
    assert answers[0].endswith(b"\r\n\r\n" + BODY)
    assert pool.open_connections == 0  # a connection that sent more than asked: closed


async def test_a_body_in_a_later_read_is_parsed(
    clerk: DevIssuer, make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    token, gw, port, before = await remembered(clerk, make_gateway, scripted)
    scripted.writes = [HEAD, BODY]
    answers = await exchange(port, [get(token)] * 2)
    assert pool_of(gw).known.hits == 0
    assert answers == before


async def test_a_head_request_is_never_answered_from_the_memo(
    clerk: DevIssuer, make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    token, gw, port, _ = await remembered(clerk, make_gateway, scripted)
    scripted.writes = [HEAD]  # an upstream answers HEAD with the head alone
    answers = await exchange(port, [get(token, "HEAD")] * 2)
    assert pool_of(gw).known.hits == 0
    assert answers[0] == answers[1]
    assert answers[0].startswith(b"HTTP/1.1 200 Fine\r\n") and answers[0].endswith(b"\r\n\r\n")


async def test_a_head_that_differs_by_a_byte_is_parsed(
    clerk: DevIssuer, make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    token, gw, port, _ = await remembered(clerk, make_gateway, scripted)
    scripted.writes = [HEAD.replace(b"Fine", b"Fina") + BODY]
    answers = await exchange(port, [get(token)])
    assert pool_of(gw).known.hits == 0
    assert answers[0].startswith(b"HTTP/1.1 200 Fina\r\n")


def test_the_memo_is_bounded_in_entries_and_head_size() -> None:
    memo = KnownHeads()
    known = KnownHead(200, b"OK", (), 0)
    memo.remember(b"x" * 4097, known)  # too long to keep
    assert memo.whole(b"x" * 4093 + b"\r\n\r\n") is None
    heads = [b"HTTP/1.1 200 OK\r\nX-N: %d\r\n\r\n" % n for n in range(257)]
    for head in heads:
        memo.remember(head, known)
    assert memo.whole(heads[0]) is None  # cleared when full
    assert memo.whole(heads[256]) == (known, len(heads[256]))
    assert memo.hits == 1


@given(extra=st.binary(max_size=40))
def test_only_the_exact_head_and_body_length_match(extra: bytes) -> None:
    memo = KnownHeads()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    known = KnownHead(200, b"OK", ((b"Content-Length", b"2"),), 2)
    memo.remember(head, known)
    found = memo.whole(head + b"ok" + extra)
    assert (found is not None) == (extra == b"")
    assert memo.whole(head[:-1] + b"ok" + extra) is None


@pytest.fixture
async def memo_proxy(clerk: DevIssuer, make_gateway: GatewayFactory,
                     scripted: Scripted) -> tuple[Running, Scripted, str]:
    """A proxy without CORS (its answers are cut around the request id) and its upstream."""
    return await proxy(make_gateway, scripted), scripted, clerk.token()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "HEAD"]), status=statuses, reason=reasons,
       headers=answer_headers,
       framing=st.sampled_from(["length", "zero", "big", "chunked", "big-chunked"]),
       body=st.binary(max_size=2000), rid=st.sampled_from(["client-id-0001", "bad id"]))
async def test_answers_from_known_heads_are_the_parsed_ones(
    memo_proxy: tuple[Running, Scripted, str], method: str, status: int, reason: bytes,
    headers: list[bytes], framing: str, body: bytes, rid: str
) -> None:
    """Generated (often hostile) upstream answers, three times each on a pooled connection:
    parsed on the task path or by llhttp, then (when kept) from the memo: all alike."""
    gw, script, token = memo_proxy
    head, payload = build_answer(status, reason, headers, framing, body)
    script.writes = [head] if method == "HEAD" else [head + payload]
    request = get(token, method, rid).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    port = gw.client.server.port or 0
    replies = [await send(port, request, method == "HEAD") for _ in range(3)]
    first = replies[0]
    for reply in replies[1:]:  # (a malformed id is replaced by a new one for each)
        assert (reply.status, reply.reason, reply.complete) == (
            first.status, first.reason, first.complete)
        assert sorted((n, _ids(v)) for n, v in reply.headers) == sorted(
            (n, _ids(v)) for n, v in first.headers)
        assert _ids(reply.body) == _ids(first.body)
