"""A forwarded request described twice is refused, never decided on the first copy.

Two `X-Forwarded-Uri`, `X-Original-URI`, `X-Forwarded-Method`, `X-Original-Method` or
`X-Forwarded-Host` headers (or a host or method holding a comma-separated list) could be
read one way by the gateway and another by the caller or the upstream: 400
`ambiguous_path`, through the fast door and the aiohttp door alike. Two `Host` headers
are refused by the HTTP parser of both doors. So is a request carrying a header with which
the upstream would serve another resource or method (`X-Original-URL`, `X-Rewrite-URL`,
method overrides): the caller passes it on, where the gateway cannot remove it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running
from tests.test_security_requests import send, status_of

CONFIG = {"routes": [
    {"name": "public", "path_prefix": "/public", "access": "public"},
    {"name": "reads", "path_prefix": "/reads", "methods": ["GET"], "access": "public"},
    {"name": "site", "path_prefix": "/site", "host": "public.example.com", "access": "public"},
]}
DOORS = [pytest.param(True, id="fast_door"), pytest.param(False, id="aiohttp_door")]


async def gateway(make_gateway: GatewayFactory, fast_path: bool, **forward_auth: Any
                  ) -> Running:
    """A forward-auth gateway with the public routes, through one door."""
    return await make_gateway(config={
        **CONFIG, "forward_auth": {"fast_path": fast_path, **forward_auth}})


async def ask(gw: Running, headers: list[tuple[str, str]], target: str = "/"
              ) -> tuple[int, dict[str, Any]]:
    """One forward-auth request with exactly these header lines; status and JSON body."""
    port = gw.client.port
    assert port is not None
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    answer = await send(port, f"GET {target} HTTP/1.1\r\nHost: gateway.test\r\n{lines}"
                        "Connection: close\r\n\r\n".encode())
    body = answer.partition(b"\r\n\r\n")[2]
    return status_of(answer), json.loads(body) if body else {}


def fast_door_answered(gw: Running) -> float:
    """Requests the fast door answered itself."""
    gw.gateway.metrics.flush()
    return gw.gateway.registry.get_sample_value(
        "clerk_gateway_forward_auth_fast_path_total", {"result": "answered"}) or 0.0


# Each pair: a single header that gets a public answer, and a second copy that would not.
TWICE = [
    pytest.param("X-Forwarded-Uri", "/public/a", "/admin", id="x-forwarded-uri"),
    pytest.param("X-Original-URI", "/public/a", "/admin", id="x-original-uri"),
    pytest.param("X-Forwarded-Method", "GET", "DELETE", id="x-forwarded-method"),
    pytest.param("X-Original-Method", "GET", "DELETE", id="x-original-method"),
    pytest.param("X-Forwarded-Host", "public.example.com", "admin.example.com",
                 id="x-forwarded-host"),
]


def base_headers(name: str) -> list[tuple[str, str]]:
    """The other describing headers a caller sends with `name`, for a public answer."""
    if name == "X-Forwarded-Host":
        return [("X-Forwarded-Uri", "/site/a")]
    if name.endswith("Method"):
        uri = "X-Original-URI" if name.startswith("X-Original") else "X-Forwarded-Uri"
        return [(uri, "/reads/a")]
    return []


@pytest.mark.parametrize("fast_path", DOORS)
@pytest.mark.parametrize(("name", "first", "second"), TWICE)
@pytest.mark.parametrize("spelling", ["same", "lower"])
async def test_a_describing_header_twice_is_refused(
    make_gateway: GatewayFactory, fast_path: bool, name: str, first: str, second: str,
    spelling: str
) -> None:
    gw = await gateway(make_gateway, fast_path)
    headers = base_headers(name)
    status, _ = await ask(gw, [*headers, (name, first)])
    assert status == 200
    other = name if spelling == "same" else name.lower()
    for pair in ((first, second), (second, first), (first, first)):
        before = fast_door_answered(gw)
        status, body = await ask(gw, [*headers, (name, pair[0]), (other, pair[1])])
        assert status == 400, (pair, body)
        assert body["reason"] == "ambiguous_path"
        assert set(body) == {"error", "reason", "message", "request_id"}
        assert fast_door_answered(gw) == before + (1 if fast_path else 0)


@pytest.mark.parametrize("fast_path", DOORS)
@pytest.mark.parametrize(("name", "value"), [
    ("X-Forwarded-Host", "admin.example.com, public.example.com"),
    ("X-Forwarded-Host", "public.example.com,admin.example.com"),
    ("X-Forwarded-Method", "GET, DELETE"),
    ("X-Original-Method", "GET,DELETE"),
])
async def test_a_host_or_method_list_is_refused(
    make_gateway: GatewayFactory, fast_path: bool, name: str, value: str
) -> None:
    gw = await gateway(make_gateway, fast_path)
    status, body = await ask(gw, [*base_headers(name), (name, value)])
    assert (status, body["reason"]) == (400, "ambiguous_path")


@pytest.mark.parametrize("fast_path", DOORS)
async def test_a_pinned_family_ignores_the_other_familys_copies(
    make_gateway: GatewayFactory, fast_path: bool
) -> None:
    gw = await gateway(make_gateway, fast_path, uri_source="original")
    status, _ = await ask(gw, [
        ("X-Original-URI", "/public/a"), ("X-Forwarded-Uri", "/a"), ("X-Forwarded-Uri", "/b")])
    assert status == 200
    status, body = await ask(gw, [("X-Original-URI", "/public/a"),
                                  ("x-original-uri", "/public/a")])
    assert (status, body["reason"]) == (400, "ambiguous_path")


@pytest.mark.parametrize("fast_path", DOORS)
async def test_untrusted_callers_duplicates_are_ignored_with_the_headers(
    make_gateway: GatewayFactory, fast_path: bool
) -> None:
    gw = await gateway(make_gateway, fast_path, trusted_callers=["10.0.0.0/8"])
    status, _ = await ask(gw, [("X-Forwarded-Uri", "/admin"), ("X-Forwarded-Uri", "/admin")],
                          "/public/x")
    assert status == 200  # the caller's own path decides, the headers are ignored


@pytest.mark.parametrize("fast_path", DOORS)
async def test_two_host_headers_are_refused(
    clerk: DevIssuer, make_gateway: GatewayFactory, fast_path: bool
) -> None:
    gw = await gateway(make_gateway, fast_path)
    port = gw.client.port
    assert port is not None
    raw = (b"GET /site/a HTTP/1.1\r\nHost: public.example.com\r\nHost: admin.example.com\r\n"
           b"Authorization: Bearer " + clerk.token().encode() + b"\r\n"
           b"Connection: close\r\n\r\n")
    assert status_of(await send(port, raw)) == 400


@pytest.mark.parametrize("fast_path", DOORS)
@pytest.mark.parametrize("name", ["X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override",
                                  "X-HTTP-Method", "X-Method-Override"])
async def test_a_rerouting_header_is_refused_as_the_caller_would_pass_it_on(
    make_gateway: GatewayFactory, fast_path: bool, name: str
) -> None:
    gw = await gateway(make_gateway, fast_path)
    status, _ = await ask(gw, [("X-Forwarded-Uri", "/public/a")])
    assert status == 200
    value = "DELETE" if "Method" in name else "/admin"
    for spelled in (name, name.upper(), name.lower(), name.replace("-", "_")):
        status, body = await ask(gw, [("X-Forwarded-Uri", "/public/a"), (spelled, value)])
        assert (status, body["reason"]) == (400, "ambiguous_path"), spelled
    untrusted = await gateway(make_gateway, fast_path, trusted_callers=["10.0.0.0/8"])
    status, body = await ask(untrusted, [(name, value)], "/public/a")
    assert (status, body["reason"]) == (400, "ambiguous_path")
