"""Property test: the fast door and the aiohttp door give the same answer to any request.

Two gateways with the same settings, one with `forward_auth.fast_path: false`, receive the
same raw bytes (generated requests: methods, versions, targets with encoded and dot segments,
tokens in headers and cookies, both forwarded-header families, request ids, duplicates,
trailing spaces, Connection options). Status, version, reason, identity headers, cache and
connection headers must match. The valid tokens are verified once up front, so the fast door
answers them without I/O.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running

ROUTES: dict[str, Any] = {"routes": [
    {"name": "public", "path_prefix": "/public", "access": "public"},
    {"name": "admin", "path_prefix": "/admin", "require": {"role": "admin"}},
    {"name": "maybe", "path_prefix": "/maybe", "access": "optional"},
    {"name": "closed", "path_prefix": "/closed", "access": "deny"},
]}
COMPARED = ("X-User-Id", "X-Org-Id", "X-Role", "X-Session-Id", "Cache-Control", "Connection",
            "WWW-Authenticate", "Content-Type", "Content-Length", "Retry-After", "Server")


@dataclass
class Answer:
    """What a server sent back on one connection."""

    status_line: str
    headers: dict[str, str]
    body: bytes

    @property
    def reason(self) -> str | None:
        """The JSON body's reason, when there is one."""
        try:
            return str(json.loads(self.body)["reason"])
        except (ValueError, KeyError, TypeError):
            return None


async def exchange(port: int, raw: bytes) -> Answer:
    """Send raw bytes on a new connection and read one answer (or what came before EOF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().title()] = value.strip()
        length = int(headers.get("Content-Length", "0"))
        body = b"" if raw.startswith(b"HEAD ") else await reader.readexactly(length)
        return Answer(lines[0], headers, body)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return Answer("", {}, b"")
    finally:
        writer.close()


@dataclass
class Pair:
    """The same gateway twice: fast door on, fast door off."""

    fast: Running
    slow: Running
    tokens: dict[str, str]

    def port(self, running: Running) -> int:
        """The public listener's port."""
        port = running.client.server.port
        assert port is not None
        return port


def parity_tokens(clerk: DevIssuer) -> dict[str, str]:
    """A member's, an admin's (both of org_1) and a garbage token (the parity tests share)."""
    return {
        "member": clerk.token(sub="user_member", org_id="org_1", role="member"),
        "admin": clerk.token(sub="user_admin", org_id="org_1", role="admin"),
        "garbage": "not.a.token",
    }


@pytest.fixture
async def pair(clerk: DevIssuer, make_gateway: GatewayFactory) -> AsyncIterator[Pair]:
    """Two gateways that have both verified the valid tokens once already."""
    fast = await make_gateway(config=ROUTES)
    slow = await make_gateway(config={**ROUTES, "forward_auth": {"fast_path": False}})
    tokens = parity_tokens(clerk)
    for running in (fast, slow):
        for token in tokens.values():
            await running.get("/", token)
    yield Pair(fast, slow, tokens)


targets = st.one_of(
    st.sampled_from(["/", "/admin", "/admin/x", "/public/a", "/maybe", "/closed", "/a/../admin",
                     "/%61dmin", "/_gateway/x", "//admin", "/public/..%2Fadmin", "/x?y=1",
                     "/admin?x=%2F"]),
    st.text(st.sampled_from("abc/.%?=&_-~2F"), max_size=16).map(lambda t: "/" + t),
)
header_options = st.fixed_dictionaries({}, optional={
    "auth": st.sampled_from(["member", "admin", "garbage", "two", "empty", "lowercase"]),
    "cookie": st.sampled_from(["member", "admin", "garbage", "other"]),
    "forwarded_uri": targets,
    "forwarded_method": st.sampled_from(["GET", "post", "DELETE"]),
    "original_uri": targets,
    "original_method": st.sampled_from(["GET", "PUT"]),
    "forwarded_host": st.sampled_from(["app.example.com", "other.example.com"]),
    "request_id": st.sampled_from(["good-request-id-0001", "bad id", "x" * 200]),
    "content_length_zero": st.just(True),
    "connection": st.sampled_from(["close", "keep-alive", "Keep-Alive, foo"]),
    "host": st.sampled_from(["absent", "twice"]),
    "trailing_space": st.just(True),
})


def auth_lines(auth: str | None, tokens: dict[str, str]) -> list[str]:
    """The Authorization lines a generated `auth` option stands for (both parity tests)."""
    if auth in ("member", "admin", "garbage"):
        return [f"Authorization: Bearer {tokens[auth]}"]
    if auth == "two":
        return [f"Authorization: Bearer {tokens['member']}",
                f"Authorization: Bearer {tokens['admin']}"]
    if auth == "empty":
        return ["Authorization: Bearer "]
    if auth == "lowercase":
        return [f"authorization: bearer {tokens['admin']}"]
    return []


def build_request(method: str, version: str, target: str, options: dict[str, Any],
                  tokens: dict[str, str]) -> bytes:
    """The raw request the options describe."""
    lines = [f"{method} {target} {version}"]
    host = options.get("host")
    if host != "absent":
        lines.append("Host: gateway.test")
    if host == "twice":
        lines.append("Host: other.test")
    lines += auth_lines(options.get("auth"), tokens)
    cookie = options.get("cookie")
    if cookie is not None:
        value = tokens.get(cookie, "x")
        lines.append(f"Cookie: theme=dark; __session={value}")
    for key, name in (("forwarded_uri", "X-Forwarded-Uri"),
                      ("forwarded_method", "X-Forwarded-Method"),
                      ("original_uri", "X-Original-URI"),
                      ("original_method", "X-Original-Method"),
                      ("forwarded_host", "X-Forwarded-Host"),
                      ("request_id", "X-Request-Id"),
                      ("connection", "Connection")):
        if key in options:
            lines.append(f"{name}: {options[key]}")
    if options.get("content_length_zero"):
        lines.append("Content-Length: 0")
    if options.get("trailing_space"):
        lines = [line + " \t" if line.startswith("X-") else line for line in lines]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_same(fast: Answer, slow: Answer, raw: bytes) -> None:
    """Both doors answered alike (request ids and dates aside)."""
    context = raw.decode("latin-1")
    assert fast.status_line == slow.status_line, context
    assert fast.reason == slow.reason, context
    for name in COMPARED:
        assert fast.headers.get(name) == slow.headers.get(name), (name, context)
    echoed = [a.headers.get("X-Request-Id") == "good-request-id-0001" for a in (fast, slow)]
    assert echoed[0] == echoed[1], context
    assert (fast.body == b"") == (slow.body == b""), context
    assert not fast.status_line.startswith("HTTP/1.1 500"), context


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "HEAD", "POST", "DELETE", "OPTIONS"]),
       version=st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
       target=targets, options=header_options)
async def test_both_doors_answer_alike(pair: Pair, method: str, version: str, target: str,
                                       options: dict[str, Any]) -> None:
    raw = build_request(method, version, target, options, pair.tokens)
    fast = await exchange(pair.port(pair.fast), raw)
    # Again: a keep-alive head parsed whole before is now answered from the door's memo.
    again = await exchange(pair.port(pair.fast), raw)
    slow = await exchange(pair.port(pair.slow), raw)
    assert_same(fast, slow, raw)
    assert_same(again, slow, raw)


async def test_the_property_exercises_the_fast_door(pair: Pair) -> None:
    """The generated shapes really reach the fast door's no-I/O path (not only handovers)."""
    raw = build_request("GET", "HTTP/1.1", "/admin", {"auth": "admin"}, pair.tokens)
    registry = pair.fast.gateway.registry
    pair.fast.gateway.metrics.flush()
    before = registry.get_sample_value(
        "clerk_gateway_forward_auth_fast_path_total", {"result": "answered"}) or 0.0
    answer = await exchange(pair.port(pair.fast), raw)
    pair.fast.gateway.metrics.flush()
    after = registry.get_sample_value(
        "clerk_gateway_forward_auth_fast_path_total", {"result": "answered"}) or 0.0
    assert answer.status_line == "HTTP/1.1 200 OK"
    assert after == before + 1
    door = pair.fast.client.server.runner.server._front  # type: ignore[union-attr]
    hits = door.known.hits
    assert_same(await exchange(pair.port(pair.fast), raw), answer, raw)
    assert door.known.hits == hits + 1
