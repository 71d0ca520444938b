"""What the upstream sees is what was decided: no client header may re-route the request.

A client's `X-Original-URL`, `X-Rewrite-URL`, method overrides, `X-Forwarded-Prefix`,
Envoy's original path and scheme or host overrides are removed before the request leaves
the proxy, in every spelling (case, `_` for `-`, repeats, named in `Connection`), with
both upstream clients and on WebSocket upgrades.
"""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devissuer import DevIssuer
from gateway.http.hop import REROUTING_HEADERS, REROUTING_PREFIXES
from tests.conftest import GatewayFactory
from tests.proxy_support import Upstream, raw_request, status_of
from tests.test_proxy_headers import build

REROUTING = [
    "X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Original-Path",
    "X-Original-Method", "X-Original-Host", "X-HTTP-Method-Override", "X-HTTP-Method",
    "X-Method-Override", "X-Forwarded-Prefix", "X-Forwarded-Path", "X-Forwarded-Uri",
    "X-Forwarded-Method", "X-Forwarded-Scheme", "X-Forwarded-Ssl", "X-Forwarded-Server",
    "X-Envoy-Original-Path", "X-Envoy-Original-Url", "Front-End-Https", "X-Url-Scheme",
    "X-Scheme", "X-Host", "X-HTTP-Host-Override",
]
CLIENTS = ("lean", "aiohttp")


def test_every_listed_name_is_covered() -> None:
    for name in REROUTING:
        key = name.lower()
        assert key in REROUTING_HEADERS or key.startswith(
            (*REROUTING_PREFIXES, "x-forwarded-")), name


def spellings(name: str) -> list[str]:
    """The name as sent, upper case, lower case and with `_` for `-`."""
    return [name, name.upper(), name.lower(), name.replace("-", "_")]


def request_lines(token: str) -> tuple[str, list[str]]:
    """Header lines with every re-routing header in every spelling, and the names sent."""
    lines, names = [], []
    for i, name in enumerate(REROUTING):
        for spelled in spellings(name):
            value = "DELETE" if "Method" in name else f"/admin/{i}"
            lines.append(f"{spelled}: {value}")
            names.append(spelled)
    lines += [f"Authorization: Bearer {token}", "X-Kept: yes",
              "Connection: x-original-url, X_HTTP_Method, keep-alive"]
    return "\r\n".join(lines) + "\r\n", names


def assert_none_arrived(upstream: Upstream) -> None:
    (seen,) = upstream.seen
    for name in REROUTING:
        assert seen.normalised(name) == [], name
    sent = "".join(value for _, value in seen.headers)
    assert "/admin/" not in sent and "DELETE" not in sent
    assert seen.values("X-Kept") == ["yes"]  # other headers still pass


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_rerouting_headers_never_reach_the_upstream(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, client: str,
    method: str
) -> None:
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url},
                            config={"proxy": {"client": client}})
    port = gw.client.port
    assert port is not None
    lines, _ = request_lines(clerk.token())
    raw = (f"{method} /reports/1 HTTP/1.1\r\nHost: app.test\r\n{lines}"
           "Content-Length: 0\r\n\r\n").encode()
    reply = await raw_request(port, raw.replace(b"keep-alive", b"close"))
    assert status_of(reply) == 200, reply[:300]
    assert_none_arrived(upstream)
    (seen,) = upstream.seen
    assert (seen.method, seen.path_qs) == (method, "/reports/1")


async def test_rerouting_headers_never_reach_a_websocket_upstream(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url})
    port = gw.client.port
    assert port is not None
    lines, _ = request_lines(clerk.token())
    lines = lines.replace("Connection: x-original-url, X_HTTP_Method, keep-alive",
                          "Connection: Upgrade, x-original-url, X_HTTP_Method")
    key = base64.b64encode(os.urandom(16)).decode()
    raw = (f"GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{lines}\r\n").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 101"), head
    assert_none_arrived(upstream)


@st.composite
def rerouting_spelling(draw: st.DrawFn) -> str:
    """A re-routing header name with random case and `-`/`_` choices."""
    name = draw(st.sampled_from(REROUTING))
    return "".join(
        draw(st.sampled_from("-_")) if char == "-"
        else (char.upper() if draw(st.booleans()) else char.lower()) for char in name)


@settings(max_examples=200, deadline=None)
@given(names=st.lists(rerouting_spelling(), min_size=1, max_size=8),
       listed=st.lists(rerouting_spelling(), max_size=3))
def test_no_spelling_of_a_rerouting_header_survives(names: list[str], listed: list[str]
                                                    ) -> None:
    pairs = [(name, "/admin") for name in names] + [("Host", "api.example.com")]
    if listed:
        pairs.append(("Connection", ", ".join(listed)))
    out = build(pairs)
    assert "/admin" not in list(out.values())
    kept = {key.lower().replace("_", "-") for key in out}
    assert kept <= {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                    "x-user-id", "x-org-id", "x-request-id"}, kept
