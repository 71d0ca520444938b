"""The forward-auth fast door: the aiohttp door's answers, without aiohttp, over real sockets.

Each answer of the fast door is compared with the aiohttp door's (a gateway with
`forward_auth: {fast_path: false}`) or pinned to it; each request the fast door does not
fully understand must reach the aiohttp door untouched, counted under the cause that sent
it there, and be answered as the aiohttp door answers it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from aiohttp import web

from gateway.app import Gateway, build_public_app
from gateway.config import load_settings
from gateway.devissuer import DevIssuer
from gateway.http.fast_door import HANDOVER_CAUSES, FastDoor
from gateway.http.guard import GuardedAppRunner
from gateway.server import public_runner
from tests.conftest import GatewayFactory, Running, free_port
from tests.revocation_support import ADMIN_TOKEN, admin_headers

TIMEOUT = 5.0  # generous: only a hang should ever reach it
RESULTS = ("answered", "answered_after_io", *HANDOVER_CAUSES)
# A revocation status stays known locally for a minute: a cached token is answered at once
# however slow the machine running the tests.
STEADY = {"revocation": {"local_ttl_seconds": 60}}
AIOHTTP_DOOR = {"forward_auth": {"fast_path": False}}
ROUTES = {"routes": [
    {"name": "health", "path": "/healthz", "access": "public"},
    {"name": "reports", "path_prefix": "/reports", "methods": ["GET"], "access": "public"},
    {"name": "admin_area", "path_prefix": "/admin", "require": {"role": "admin"}},
    {"name": "retired", "path_prefix": "/v0", "access": "deny"},
]}


# -- a raw HTTP/1.1 client ------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP response as read off the wire."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of a header (any case), else None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> dict[str, Any]:
        """The JSON body."""
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document

    def comparable(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers (lower-cased names, sorted, no Date) and body."""
        headers = sorted((k.lower(), v) for k, v in self.headers if k.lower() != "date")
        return self.status, headers, self.body


async def read_answer(reader: asyncio.StreamReader, head_only: bool = False) -> Answer:
    """Read one response off a stream (for a HEAD request, its head only)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    answer = Answer(int(status_line.split()[1]), headers)
    length = answer.header("Content-Length")
    if length and not head_only:
        answer.body = await reader.readexactly(int(length))
    return answer


async def answer_of(raw: bytes) -> Answer:
    """The first response in bytes already received."""
    reader = asyncio.StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    return await read_answer(reader)


@dataclass
class Connection:
    """A raw client connection: bytes out, whole responses in."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        """Write bytes as they are."""
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, head_only: bool = False) -> Answer:
        """Read one response (for a HEAD request, its head only)."""
        return await asyncio.wait_for(read_answer(self.reader, head_only), TIMEOUT)

    async def ask(self, data: bytes, head_only: bool = False) -> Answer:
        """Send one request and read its response."""
        await self.send(data)
        return await self.answer(head_only)

    async def rest(self) -> bytes:
        """Everything the server still sends, up to its close (a hang fails the test)."""
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)

@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Connection]:
    """A raw connection to a listener on loopback, closed afterwards."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield Connection(reader, writer)
    finally:
        writer.close()


def request(method: str = "GET", target: str = "/", headers: Mapping[str, str] | None = None,
            *, version: str = "HTTP/1.1", host: str | None = "gateway.test") -> bytes:
    """A request head without a body (Host first; none when host is None)."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def bearer(token: str, **more: str) -> dict[str, str]:
    """An Authorization header for a token, plus more headers."""
    return {"Authorization": f"Bearer {token}", **more}


# -- gateways and their counters ------------------------------------------------------------


def port_of(running: Running) -> int:
    """The public listener's port."""
    port = running.client.server.port
    assert port is not None
    return port


def fast_path(gateway: Gateway) -> dict[str, float]:
    """The fast-door counter by result, batched counts flushed first."""
    gateway.metrics.flush()
    return {result: gateway.registry.get_sample_value(
        "clerk_gateway_forward_auth_fast_path_total", {"result": result}) or 0.0
        for result in RESULTS}


def since(before: dict[str, float], gateway: Gateway) -> dict[str, float]:
    """The fast-door results counted since `before` (only those that moved)."""
    now = fast_path(gateway)
    return {result: now[result] - before[result] for result in RESULTS
            if now[result] != before[result]}


def decisions(gateway: Gateway, reason: str) -> float:
    """Forward-auth decisions counted with a reason (every route and outcome)."""
    gateway.metrics.flush()
    return sum(sample.value for metric in gateway.registry.collect()
               for sample in metric.samples
               if sample.name == "clerk_gateway_decisions_total"
               and sample.labels["door"] == "forward_auth" and sample.labels["reason"] == reason)


@asynccontextmanager
async def listening(runner: web.AppRunner) -> AsyncIterator[int]:
    """Serve a runner on a loopback port; cleaned up afterwards unless the test did."""
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        if runner.server is not None:
            await runner.cleanup()


def slow_token(clerk: DevIssuer, delay: float = 0.5) -> str:
    """A token whose first check waits `delay` seconds: signed by a key the gateway must fetch."""
    clerk.rotate()
    clerk.delay = delay
    return clerk.token(sub="user_slow")


async def until_fetching(clerk: DevIssuer, hits: int) -> None:
    """Wait until the fake Clerk has been asked for its keys more than `hits` times."""
    async with asyncio.timeout(TIMEOUT):
        while clerk.hits["jwks"] <= hits:
            await asyncio.sleep(0.01)


# -- parity with the aiohttp door -----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A request both doors get (headers may name {admin}, {member} or {forged} tokens)."""

    status: int
    headers: dict[str, str]
    method: str = "GET"
    target: str = "/"
    version: str = "HTTP/1.1"
    result: str = "answered"  # how the fast door answers it once the token is known
    closes: bool = False

    def head(self, tokens: Mapping[str, str]) -> bytes:
        """The request, tokens filled in, with a fixed request id."""
        headers = {k: v.format(**tokens) for k, v in self.headers.items()}
        return request(self.method, self.target, {**headers, "X-Request-Id": "parity-0001"},
                       version=self.version)


FORWARDED_ADMIN = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/admin/reports"}
CASES = {
    "allowed_v2_org_admin": Case(200, {"Authorization": "Bearer {admin}", **FORWARDED_ADMIN}),
    "allowed_by_session_cookie": Case(200, {"Cookie": "theme=dark; __session={admin}",
                                            **FORWARDED_ADMIN}),
    "missing_token": Case(401, FORWARDED_ADMIN),
    "forged_token": Case(401, {"Authorization": "Bearer {forged}", **FORWARDED_ADMIN},
                         result="answered_after_io"),  # a refusal is not cached
    "forbidden_by_role": Case(403, {"Authorization": "Bearer {member}", **FORWARDED_ADMIN}),
    "denied_route": Case(403, {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v0/items"}),
    "public_route_by_forwarded_method": Case(
        200, {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/reports/q1?year=2025"}),
    "forwarded_method_misses_the_route": Case(
        401, {"X-Forwarded-Method": "DELETE", "X-Forwarded-Uri": "/reports/q1"}),
    "nginx_original_uri": Case(403, {"Authorization": "Bearer {member}",
                                     "X-Original-Method": "GET",
                                     "X-Original-URI": "/admin/reports"}),
    "conflicting_uris": Case(400, {"Authorization": "Bearer {admin}",
                                   "X-Forwarded-Uri": "/admin/reports",
                                   "X-Original-URI": "/healthz"}),
    "own_path_without_forwarded_headers": Case(403, {"Authorization": "Bearer {member}"},
                                               target="/admin/reports"),
    "empty_body_by_length": Case(200, {"Authorization": "Bearer {admin}",
                                       "Content-Length": "0"}),
    "cookies_parsed_as_aiohttp_does": Case(403, {
        "Cookie": 'a=1;__session={member}; b="x y"; c', **FORWARDED_ADMIN}),
    "header_token_before_cookie": Case(200, {"Authorization": "Bearer {admin}",
                                             "Cookie": "__session={member}"}),
    "non_ascii_forwarded_uri": Case(400, {"X-Forwarded-Uri": "/admin/caf\u00e9"}),
    "head_refused": Case(401, {}, method="HEAD"),
    "head_allowed": Case(200, {"Authorization": "Bearer {admin}"}, method="HEAD"),
    "connection_close": Case(401, {"Connection": "close"}, closes=True),
    "http_1_0": Case(401, {}, version="HTTP/1.0", closes=True),
    "http_1_0_keep_alive": Case(200, {"Authorization": "Bearer {admin}",
                                      "Connection": "keep-alive"}, version="HTTP/1.0"),
}


def parity_tokens(clerk: DevIssuer) -> dict[str, str]:
    """Clerk v2 tokens of an org admin and an org member, and a forged one."""
    admin = clerk.token(version=2, sub="user_admin", org_id="org_1", org_slug="acme",
                        role="admin")
    member = clerk.token(version=2, sub="user_member", org_id="org_1", org_slug="acme",
                         role="member")
    forged = admin.rsplit(".", 1)[0] + "." + member.rsplit(".", 1)[1]
    return {"admin": admin, "member": member, "forged": forged}


async def answer_twice(running: Running, case: Case, tokens: Mapping[str, str],
                       ) -> tuple[Answer, dict[str, float]]:
    """A case's answer after a keep-alive warm-up with its headers, and how it was counted."""
    head_only = case.method == "HEAD"
    warm_up = Case(case.status, {k: v for k, v in case.headers.items() if k != "Connection"})
    async with connect(port_of(running)) as conn:
        await conn.ask(warm_up.head(tokens))
        before = fast_path(running.gateway)
        answer = await conn.ask(case.head(tokens), head_only)
        counted = since(before, running.gateway)
        if head_only:  # no body bytes: the next answer starts right away
            follow_up = await conn.ask(request(headers={"Connection": "close"}))
            assert follow_up.status == 401
        if case.closes:
            assert await conn.rest() == b""
    return answer, counted


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_the_fast_door_answers_as_the_aiohttp_door(
    case: Case, clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    fast = await make_gateway(config={**STEADY, **ROUTES})
    reference = await make_gateway(config={**STEADY, **ROUTES, **AIOHTTP_DOOR})
    tokens = parity_tokens(clerk)
    answer, counted = await answer_twice(fast, case, tokens)
    expected, _ = await answer_twice(reference, case, tokens)
    assert counted == {case.result: 1}
    assert expected.status == case.status
    assert answer.comparable() == expected.comparable()
    assert fast_path(reference.gateway) == dict.fromkeys(RESULTS, 0.0)


ASSERTIONS = {"assertion": {"enabled": True, "issuer": "https://gateway.test",
                             "audience": "https://api.test"}}


@pytest.mark.parametrize("config", [{}, ASSERTIONS], ids=["plain", "signed_assertions"])
async def test_each_cached_token_gets_its_own_identity_headers_every_time(
    config: dict[str, Any], clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    """Identity headers are encoded once per verified token: users taking turns on one
    connection still each get their own, on every answer (the header values of one user
    could otherwise reach another's upstream)."""
    running = await make_gateway(config={**STEADY, **config})
    users = [f"user_{n}" for n in range(5)]
    tokens = {user: clerk.token(sub=user, org_id=f"org_{user}") for user in users}
    async with connect(port_of(running)) as conn:
        for user in users:  # every token verified and cached first
            assert (await conn.ask(request(headers=bearer(tokens[user])))).status == 200
        before = fast_path(running.gateway)
        for turn in range(40):
            user = users[turn * 3 % len(users)]
            answer = await conn.ask(request(headers=bearer(tokens[user])))
            assert answer.status == 200
            assert answer.header("X-User-Id") == user
            assert answer.header("X-Org-Id") == f"org_{user}"
            assert [k.lower() for k, _ in answer.headers].count("x-user-id") == 1
            signed = answer.header("X-Gateway-Assertion")
            assert (signed is not None) == bool(config)
            if signed is not None:
                assert jwt.decode(signed, options={"verify_signature": False})["sub"] == user
        assert since(before, running.gateway) == {"answered": 40}


@pytest.mark.parametrize("realm", ["Bürokratie", "网关"])
async def test_a_non_ascii_realm_is_sent_as_the_aiohttp_door_sends_it(
    realm: str, make_gateway: GatewayFactory
) -> None:
    fast = await make_gateway(config={"realm": realm})
    reference = await make_gateway(config={"realm": realm, **AIOHTTP_DOOR})
    refusal = request(headers={"X-Request-Id": "realm-00001"})
    answers = []
    for running in (fast, reference):
        async with connect(port_of(running)) as conn:
            answers.append(await conn.ask(refusal))
    assert answers[0].comparable() == answers[1].comparable()
    assert answers[0].status == 401
    assert since(dict.fromkeys(RESULTS, 0.0), fast.gateway) == {"answered": 1}


async def test_a_new_token_is_decided_after_io_then_at_once_on_the_same_connection(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=STEADY)
    token = clerk.token(sub="user_new", org_id="org_1", role="admin")
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        first = await conn.ask(request(headers=bearer(token)))
        assert since(before, gw.gateway) == {"answered_after_io": 1}
        second = await conn.ask(request(headers=bearer(token)))
    assert since(before, gw.gateway) == {"answered_after_io": 1, "answered": 1}
    for answer in (first, second):
        assert answer.status == 200
        assert (answer.header("X-User-Id"), answer.header("X-Org-Id")) == ("user_new", "org_1")
        assert answer.header("Cache-Control") == "no-store"


async def test_a_request_sent_while_an_answer_is_decided_is_answered_after_it(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=STEADY)
    token = slow_token(clerk)
    before, hits = fast_path(gw.gateway), clerk.hits["jwks"]
    async with connect(port_of(gw)) as conn:
        await conn.send(request(headers=bearer(token, **{"X-Request-Id": "in-order-1"})))
        await until_fetching(clerk, hits)
        await conn.send(request(headers={"X-Request-Id": "in-order-2"}))
        first, second = await conn.answer(), await conn.answer()
    assert (first.status, first.header("X-Request-Id")) == (200, "in-order-1")
    assert (second.status, second.header("X-Request-Id")) == (401, "in-order-2")
    assert since(before, gw.gateway) == {"answered_after_io": 1, "answered": 1}


async def test_an_answer_given_at_once_is_written_before_a_half_close_closes(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    """Answers decided at once are written at the end of the loop's round: the caller's
    half-close, read in the same round, must not close the connection before it."""
    gw = await make_gateway(config=STEADY)
    token = clerk.token(sub="user_round")
    async with connect(port_of(gw)) as conn:  # warm: the token is cached from here on
        assert (await conn.ask(request(headers=bearer(token)))).status == 200
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        conn.writer.write(request(headers=bearer(token, **{"X-Request-Id": "round-0001"})))
        conn.writer.write_eof()  # the request and the half-close, read in one round
        answer = await conn.answer()
        assert (answer.status, answer.header("X-Request-Id")) == (200, "round-0001")
        assert await conn.rest() == b""
    assert since(before, gw.gateway) == {"answered": 1}


async def test_a_caller_that_half_closes_still_gets_the_answer_being_decided(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=STEADY)
    token = slow_token(clerk, delay=0.3)
    async with connect(port_of(gw)) as conn:
        await conn.send(request(headers=bearer(token)))
        conn.writer.write_eof()
        answer = await conn.answer()
        assert await conn.rest() == b""
    assert answer.status == 200
    assert answer.header("X-User-Id") == "user_slow"


# -- handovers to the aiohttp door ----------------------------------------------------------


async def test_pipelined_requests_are_handed_over_and_answered_in_order(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=STEADY)
    token = clerk.token(sub="user_pipe")
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        await conn.send(request(headers={"X-Request-Id": "pipelined-1"})
                        + request(headers=bearer(token, **{"X-Request-Id": "pipelined-2"})))
        first, second = await conn.answer(), await conn.answer()
        later = await conn.ask(request(headers=bearer(token)))
    assert (first.status, first.header("X-Request-Id")) == (401, "pipelined-1")
    assert (second.status, second.header("X-Request-Id")) == (200, "pipelined-2")
    assert later.status == 200
    # Handed over for good: the aiohttp door answered the later request too.
    assert since(before, gw.gateway) == {"pipelined": 1}


BODIES = {
    "content_length": (request("POST", headers={"Content-Length": "5"}) + b"hello", False),
    "chunked": (request("POST", headers={"Transfer-Encoding": "chunked"})
                + b"5\r\nhello\r\n0\r\n\r\n", False),
    "expect": (request("POST", headers={"Content-Length": "5", "Expect": "100-continue"}),
               True),
}


@pytest.mark.parametrize("raw, expects", BODIES.values(), ids=BODIES.keys())
async def test_a_request_with_a_body_is_handed_over_and_decided(
    raw: bytes, expects: bool, clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=STEADY)
    token = clerk.token(sub="user_body")
    raw = raw.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {token}\r\n\r\n".encode(), 1)
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(raw)
        if expects:
            assert answer.status == 100
            answer = await conn.ask(b"hello")
        later = await conn.ask(request())
    assert (answer.status, answer.header("X-User-Id")) == (200, "user_body")
    assert later.status == 401
    assert since(before, gw.gateway) == {"body": 1}


UPGRADES = {
    "websocket": ({"Upgrade": "websocket", "Connection": "Upgrade"}, 401),
    "upgrade_header_alone": ({"Upgrade": "h2c"}, 401),
    "hixie_76": ({"Sec-WebSocket-Key1": "4 @1  46546xW%0l 1 5"}, 400),  # aiohttp refuses it
}


@pytest.mark.parametrize("headers, status", UPGRADES.values(), ids=UPGRADES.keys())
async def test_an_upgrade_is_handed_over(
    headers: dict[str, str], status: int, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(request(headers=headers))
    assert answer.status == status
    assert answer.json()["reason"] == ("missing_token" if status == 401 else "malformed_request")
    assert since(before, gw.gateway) == {"upgrade": 1}


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
async def test_an_unusual_http_version_is_handed_over(
    version: str, clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=STEADY)
    token = clerk.token(sub="user_version")
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(request(headers=bearer(token), version=version))
    assert (answer.status, answer.header("X-User-Id")) == (200, "user_version")
    assert since(before, gw.gateway) == {"version": 1}


TARGETS = {
    "reserved_path": ("/_gateway/x", 404, "not_found"),
    "reserved_prefix": ("/_gatewayish", 401, "missing_token"),
    "percent_encoded": ("/a%2Fb", 400, "ambiguous_path"),
    "dot_segment": ("/a/./b", 401, "missing_token"),
    "fragment": ("/a#b", 400, "ambiguous_path"),
    "absolute_form": ("http://gateway.test/a", 400, "ambiguous_path"),
}


@pytest.mark.parametrize("target, status, reason", TARGETS.values(), ids=TARGETS.keys())
async def test_an_unusual_target_is_handed_over(
    target: str, status: int, reason: str, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(request(target=target))
        later = await conn.ask(request())
    assert (answer.status, answer.json()["reason"]) == (status, reason)
    assert later.status == 401  # the aiohttp door goes on serving the connection
    assert since(before, gw.gateway) == {"target": 1}


async def test_a_non_ascii_target_is_handed_over_and_refused(
    make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
    assert (answer.status, answer.json()["reason"]) == (400, "malformed_request")
    handed = since(before, gw.gateway)
    assert handed in ({"target": 1}, {"malformed": 1})  # llhttp may refuse it first


LIMITS = {"limits": {"max_header_bytes": 1024, "max_headers": 16}}
OVERSIZE = {
    "one_long_header": ({"Authorization": "Bearer " + "a" * 2000}, 431, "headers_too_large"),
    "too_many_headers": ({f"X-H{i}": "v" for i in range(20)}, 400, "malformed_request"),
    # Over the fast door's head limit but within aiohttp's per-line limits: decided as usual.
    "long_head_of_short_lines": ({f"X-H{i}": "v" * 150 for i in range(8)}, 401,
                                 "missing_token"),
}


@pytest.mark.parametrize("headers, status, reason", OVERSIZE.values(), ids=OVERSIZE.keys())
async def test_an_oversize_head_is_handed_over(
    headers: dict[str, str], status: int, reason: str, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=LIMITS)
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(request(headers=headers))
    assert (answer.status, answer.json()["reason"]) == (status, reason)
    # the token is never echoed (the random request id may hold "aaaa" by chance)
    assert "aaaa" not in answer.body.decode().replace(answer.json()["request_id"], "")
    assert since(before, gw.gateway) == {"oversize": 1}


MALFORMED = {
    "duplicate_host": request(headers={"Host": "evil.test"}),
    "duplicate_user_agent": request(headers={"User-Agent": "a", "user-agent": "b"}),
    "missing_host": request(host=None),
    "nul_in_a_value": request(headers={"X-A": "a\x00b"}),
    "space_in_a_name": request(headers={"Bad Header": "v"}),
    "garbage": b"GARBAGE\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_head_is_handed_over_and_refused_with_json(
    raw: bytes, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(raw)
        assert await conn.rest() == b""  # the aiohttp door closes after a malformed request
    assert (answer.status, answer.json()["reason"]) == (400, "malformed_request")
    assert since(before, gw.gateway) == {"malformed": 1}


async def test_a_handover_after_fast_answers_keeps_the_connection_working(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=STEADY)
    token = clerk.token(sub="user_mixed")
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        assert (await conn.ask(request(headers=bearer(token)))).status == 200
        assert (await conn.ask(request(headers=bearer(token)))).status == 200
        handed = await conn.ask(request("POST", headers=bearer(token, **{
            "Content-Length": "2"})) + b"{}")
        later = await conn.ask(request(headers=bearer(token)))
    assert (handed.status, later.status) == (200, 200)
    assert since(before, gw.gateway) == {"answered_after_io": 1, "answered": 1, "body": 1}


# -- heads in pieces, slow heads, idle connections ------------------------------------------


async def test_a_head_split_over_several_reads_is_answered_by_the_fast_door(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=STEADY)
    token = clerk.token(sub="user_split")
    raw = request(target="/reports", headers=bearer(token))
    cut = raw.index(b"Bearer ") + 20
    pieces = [raw[:9], raw[9:cut], raw[cut:]]  # in the target, in the token, the rest
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        for piece in pieces:
            await conn.send(piece)
            await asyncio.sleep(0.05)
        answer = await conn.answer()
        again = await conn.ask(raw)
    assert (answer.status, answer.header("X-User-Id")) == (200, "user_split")
    assert again.status == 200
    assert since(before, gw.gateway) == {"answered_after_io": 1, "answered": 1}


SLOW_HEADS = {"limits": {"header_timeout_seconds": 0.5}}


async def assert_cut_with_408(conn: Connection) -> None:
    """The connection gets a 408 JSON answer, then is closed."""
    answer = await conn.answer()
    assert_408(answer)
    assert await conn.rest() == b""


def assert_408(answer: Answer) -> None:
    """A 408 JSON answer that closes the connection."""
    assert (answer.status, answer.json()["reason"]) == (408, "request_timeout")
    assert answer.header("Connection") == "close"


async def test_a_connection_that_sends_nothing_gets_408(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config=SLOW_HEADS)
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        await assert_cut_with_408(conn)
    assert since(before, gw.gateway) == {}  # the fast door itself cut it


async def test_a_head_that_stops_halfway_gets_408(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config=SLOW_HEADS)
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        await conn.send(b"GET / HTTP/1.1\r\nHost: gateway.test\r\nX-A: b\r\n")
        await assert_cut_with_408(conn)
    assert since(before, gw.gateway) == {}


async def test_a_trickled_head_is_cut_even_while_bytes_keep_coming(
    make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=SLOW_HEADS)
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        reading = asyncio.create_task(conn.rest())
        await conn.send(b"GET / HTTP/1.1\r\nHost: gateway.test\r\n")
        for _ in range(40):  # 4 s of trickle against a 0.5 s deadline
            await asyncio.sleep(0.1)
            if reading.done():
                break  # answered and closed: stop sending, as a real client would
            await conn.send(b"X-A: b\r\n")
        assert_408(await answer_of(await reading))
    assert since(before, gw.gateway) == {}


async def test_a_second_head_that_stops_halfway_gets_408(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config=SLOW_HEADS)
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        assert (await conn.ask(request())).status == 401
        await conn.send(b"GET / HTTP/1.1\r\nHost: gateway.test\r\n")
        await assert_cut_with_408(conn)
    assert since(before, gw.gateway) == {"answered": 1}


def with_deadlines(clerk: DevIssuer, head: float, keepalive: float) -> tuple[Gateway,
                                                                             GuardedAppRunner]:
    """A forward-auth gateway whose fast door has these head and keep-alive deadlines."""
    gateway = Gateway(load_settings({"CLERK_ISSUER": clerk.issuer}))
    assert gateway.forward_auth is not None
    door = FastDoor(gateway.forward_auth, gateway.metrics, max_head_bytes=8190, max_headers=100,
                    head_timeout=head, keepalive_timeout=keepalive)
    return gateway, GuardedAppRunner(build_public_app(gateway), head_timeout=head,
                                     realm="clerk-gateway", front=door, access_log=None)


async def test_an_idle_kept_alive_connection_is_closed_without_an_answer(
    clerk: DevIssuer
) -> None:
    gateway, runner = with_deadlines(clerk, head=0.3, keepalive=0.6)
    async with listening(runner) as port, connect(port) as conn:
        assert (await conn.ask(request())).status == 401
        assert await conn.rest() == b""  # closed when idle: no 408, the request was answered
    assert fast_path(gateway)["answered"] == 1


async def test_the_keep_alive_timeout_applies_after_an_answer_even_below_the_head_deadline(
    clerk: DevIssuer
) -> None:
    _, runner = with_deadlines(clerk, head=30, keepalive=0.3)
    async with listening(runner) as port, connect(port) as conn:
        assert (await conn.ask(request())).status == 401
        # closed after the 0.3 s keep-alive, long before the 30 s head deadline
        assert await asyncio.wait_for(conn.reader.read(), 3) == b""


@pytest.mark.parametrize("step", ["authorize_now", "authorize"])
async def test_a_failing_decision_costs_one_500_json_answer_and_the_connection(
    step: str, clerk: DevIssuer, make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    """A bug while deciding, at once (authorize_now) or after I/O (authorize, a new token)."""
    gw = await make_gateway()

    def broken(facts: Any) -> None:
        raise RuntimeError("injected fault with a secret inside")

    monkeypatch.setattr(gw.gateway.authorizer, step, broken)
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(request(headers=bearer(clerk.token(sub="user_broken"))))
        assert await conn.rest() == b""  # the connection closes after the 500
    assert answer.status == 500
    assert answer.json()["reason"] == "internal_error"
    assert b"secret" not in answer.body and b"Traceback" not in answer.body
    assert answer.header("Connection") == "close"
    assert any("forward-auth decision failed" in r.getMessage() for r in caplog.records)


# -- answers: Connection, HEAD, request ids -------------------------------------------------


async def test_connection_close_is_answered_then_closed(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(request(headers={"Connection": "close"}))
        assert await conn.rest() == b""
    assert answer.status == 401
    assert answer.header("Connection") == "close"
    assert since(before, gw.gateway) == {"answered": 1}


async def test_head_gets_the_length_of_the_body_but_no_body(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        await conn.send(request("HEAD", headers={"Connection": "close"}))
        raw = await conn.rest()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    length = [line for line in head.split(b"\r\n") if line.startswith(b"Content-Length: ")]
    assert len(length) == 1 and int(length[0].split(b": ")[1]) > 0
    assert body == b""
    assert since(before, gw.gateway) == {"answered": 1}


async def test_a_well_formed_request_id_is_echoed(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(request(headers={"X-Request-Id": "trace:abc-123.4_5"}))
    assert answer.header("X-Request-Id") == "trace:abc-123.4_5"
    assert answer.json()["request_id"] == "trace:abc-123.4_5"


@pytest.mark.parametrize("given", ["short", "has spaces in it", "x" * 129, "<script>alert"])
async def test_a_malformed_request_id_is_replaced(
    given: str, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        answer = await conn.ask(request(headers={"X-Request-Id": given}))
    rid = answer.header("X-Request-Id")
    assert rid is not None and rid != given
    assert len(rid) == 32 and int(rid, 16) >= 0
    assert answer.json()["request_id"] == rid
    assert since(before, gw.gateway) == {"answered": 1}


# -- observation ----------------------------------------------------------------------------


async def test_each_fast_answer_is_logged_and_counted_once(
    clerk: DevIssuer, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await make_gateway(config=STEADY)
    token = clerk.token(sub="user_logged", org_id="org_9")
    refused, allowed = decisions(gw.gateway, "missing_token"), decisions(gw.gateway, "ok")
    before = fast_path(gw.gateway)
    async with connect(port_of(gw)) as conn:
        for rid, headers in [("log-missing-1", {}), ("log-new-token", bearer(token)),
                             ("log-cached-token", bearer(token))]:
            await conn.ask(request(headers={**headers, "X-Request-Id": rid}))
    assert since(before, gw.gateway) == {"answered": 2, "answered_after_io": 1}
    assert decisions(gw.gateway, "missing_token") == refused + 1
    assert decisions(gw.gateway, "ok") == allowed + 2
    lines = [access_fields(r) for r in caplog.records if r.name == "gateway.access"]
    assert sorted(lines) == sorted([
        ("log-missing-1", "forward_auth", "GET", 401, "missing_token", None),
        ("log-new-token", "forward_auth", "GET", 200, "ok", "user_logged"),
        ("log-cached-token", "forward_auth", "GET", 200, "ok", "user_logged"),
    ])


def access_fields(record: logging.LogRecord) -> tuple[Any, ...]:
    """Request id, door, method, status, reason and user of an access log line."""
    names = ("request_id", "door", "method", "status", "reason", "user")
    return tuple(getattr(record, name) for name in names)


# -- shutdown -------------------------------------------------------------------------------


async def test_shutdown_closes_an_idle_fast_door_connection(clerk: DevIssuer) -> None:
    gateway = Gateway(load_settings({"CLERK_ISSUER": clerk.issuer}))
    runner = public_runner(gateway)
    async with listening(runner) as port, connect(port) as conn:
        assert (await conn.ask(request())).status == 401
        await asyncio.wait_for(runner.cleanup(), TIMEOUT)
        assert await conn.rest() == b""
    assert fast_path(gateway)["answered"] == 1


async def test_shutdown_waits_for_an_answer_being_decided(clerk: DevIssuer) -> None:
    gateway = Gateway(load_settings({"CLERK_ISSUER": clerk.issuer}))
    runner = public_runner(gateway)
    async with listening(runner) as port, connect(port) as conn:
        token = slow_token(clerk)
        hits = clerk.hits["jwks"]
        await conn.send(request(headers=bearer(token)))
        await until_fetching(clerk, hits)
        cleanup = asyncio.create_task(runner.cleanup())
        answer = await conn.answer()
        assert await conn.rest() == b""
        await asyncio.wait_for(cleanup, TIMEOUT)
    assert (answer.status, answer.header("X-User-Id")) == (200, "user_slow")
    assert fast_path(gateway)["answered_after_io"] == 1


# -- revocation and the switch --------------------------------------------------------------


async def revoked_on_an_open_connection(running: Running, token: str) -> Answer:
    """Two allowed requests on one connection, the user revoked, then the third's answer."""
    async with connect(port_of(running)) as conn:
        for _ in range(2):
            assert (await conn.ask(request(headers=bearer(token)))).status == 200
        added = await running.admin.post(
            "/admin/revocations", json={"kind": "user", "id": "user_revoked"},
            headers=admin_headers())
        assert added.status == 201
        return await conn.ask(request(headers=bearer(token, **{"X-Request-Id": "revoked-01"})))


async def test_a_cached_token_is_refused_after_its_user_is_revoked(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    env = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    fast = await make_gateway(env=env, config=STEADY)
    reference = await make_gateway(env=env, config={**STEADY, **AIOHTTP_DOOR})
    token = clerk.token(sub="user_revoked", sid="sess_revoked", lifetime=600)
    before = fast_path(fast.gateway)
    answer = await revoked_on_an_open_connection(fast, token)
    expected = await revoked_on_an_open_connection(reference, token)
    assert answer.status in (401, 403)
    assert answer.json()["reason"] == "revoked"
    assert answer.comparable() == expected.comparable()
    counted = since(before, fast.gateway)
    assert set(counted) <= {"answered", "answered_after_io"}
    assert sum(counted.values()) == 3


async def test_fast_path_false_leaves_every_answer_to_the_aiohttp_door(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config={**STEADY, **AIOHTTP_DOOR})
    token = clerk.token(sub="user_plain")
    async with connect(port_of(gw)) as conn:
        answers = [await conn.ask(request(headers=headers))
                   for headers in (bearer(token), bearer(token), {})]
        answers.append(await conn.ask(request("HEAD", headers=bearer(token)), head_only=True))
        answers.append(await conn.ask(request(headers={"Connection": "close"})))
        assert await conn.rest() == b""
    assert [a.status for a in answers] == [200, 200, 401, 200, 401]
    assert answers[0].header("X-User-Id") == "user_plain"
    assert fast_path(gw.gateway) == dict.fromkeys(RESULTS, 0.0)
    assert decisions(gw.gateway, "ok") == 3
