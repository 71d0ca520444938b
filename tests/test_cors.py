"""CORS: settings, proxy mode (preflights answered, headers on every response) and forward-auth
mode (preflights let through without a token, counted), through both forward-auth doors."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ConfigError, load_settings
from gateway.cors import CorsPolicy, is_origin
from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running, free_port

ALLOWED = "http://localhost:3000"  # the dev issuer's default azp
OTHER = "http://evil.localhost:3000"
PREFLIGHT_HEADERS = {
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization",
}


def preflight(origin: str, method: str = "GET", headers: str = "authorization",
              ) -> dict[str, str]:
    """The headers of a browser's preflight."""
    sent = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        sent["Access-Control-Request-Headers"] = headers
    return sent


def settings_problems(config: dict[str, Any], tmp_path: Any,
                      env: dict[str, str] | None = None) -> list[str]:
    """The problems load_settings reports for a config file."""
    import yaml

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        load_settings({"CLERK_ISSUER": "https://clerk.example.com", **(env or {})}, str(path))
    return caught.value.problems


def cors_headers(response: Any) -> dict[str, str]:
    """Every Access-Control-* header of a response."""
    return {k: v for k, v in response.headers.items()
            if k.lower().startswith("access-control-")}


def preflights_counted(gw: Running, door: str, result: str) -> float:
    """The preflight counter's value."""
    gw.gateway.metrics.flush()
    return gw.gateway.registry.get_sample_value(
        "clerk_gateway_cors_preflights_total", {"door": door, "result": result}) or 0.0


# ------------------------------------------------------------------------------- settings


def test_allowed_origins_default_to_the_authorized_parties() -> None:
    settings = load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                              "CLERK_AUTHORIZED_PARTIES": f"{ALLOWED},https://x.example.com"})
    policy = CorsPolicy(settings.cors)
    assert policy.enabled
    assert settings.cors.rule.origins == {ALLOWED, "https://x.example.com"}
    assert policy.response_headers(ALLOWED, "default")[0] == (
        "Access-Control-Allow-Origin", ALLOWED)
    assert policy.response_headers(OTHER, "default") == []


def test_without_any_origin_cors_is_left_to_the_upstream() -> None:
    settings = load_settings({"CLERK_ISSUER": "https://clerk.example.com"})
    policy = CorsPolicy(settings.cors)
    assert not policy.enabled
    assert not policy.is_preflight("OPTIONS", preflight(ALLOWED))


@pytest.mark.parametrize("origin", [
    "http://app.localhost:3000/", "http://app.localhost:3000/path", "app.localhost",
    "ftp://app.localhost", "http://APP.localhost", "http://user@app.localhost",
    "http://app.localhost:99999", "null",
])
def test_an_allowed_origin_must_be_an_origin(origin: str, tmp_path: Any) -> None:
    problems = settings_problems({"cors": {"allowed_origins": [origin]}}, tmp_path)
    assert any("cors.allowed_origins" in p and "is not an origin" in p for p in problems)
    assert not is_origin(origin)


def test_wildcard_with_credentials_is_refused(tmp_path: Any) -> None:
    problems = settings_problems(
        {"cors": {"allowed_origins": ["*"], "allow_credentials": True}}, tmp_path)
    assert any("cannot be combined with allow_credentials" in p for p in problems)


def test_every_cors_problem_is_reported_at_once(tmp_path: Any) -> None:
    problems = settings_problems({"cors": {
        "allowed_origins": ["http://a.localhost/"], "allowed_headers": ["bad header"],
        "max_age_seconds": -1, "colour": "blue", "routes": {"nope": {}},
    }}, tmp_path)
    joined = "\n".join(problems)
    for expected in ("cors.allowed_origins", "cors.allowed_headers", "cors.max_age_seconds",
                     "cors.colour: unknown setting", "cors.routes.nope: no route has this name"):
        assert expected in joined


# ------------------------------------------------------------------------------- proxy mode


async def _cors_upstream(aiohttp_server: Any) -> tuple[str, list[web.Request]]:
    """An upstream that answers with its own (too generous) CORS header, recording requests."""
    seen: list[web.Request] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"path": request.path}, headers={
            "Access-Control-Allow-Origin": "*", "Vary": "Accept-Encoding"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), seen


@pytest.fixture
async def proxy(make_gateway: GatewayFactory, aiohttp_server: Any,
                ) -> tuple[Running, list[web.Request]]:
    url, seen = await _cors_upstream(aiohttp_server)
    gw = await make_gateway(
        {"GATEWAY_UPSTREAM": url, "CLERK_AUTHORIZED_PARTIES": ALLOWED},
        {"routes": [{"name": "open", "path_prefix": "/open", "access": "public"},
                    {"name": "admin", "path_prefix": "/admin", "require": {"role": "admin"}}],
         "cors": {"max_age_seconds": 120, "routes": {"admin": {"allowed_methods": ["DELETE"]}}}})
    return gw, seen


async def test_proxy_answers_an_allowed_preflight_itself(
    proxy: tuple[Running, list[web.Request]]
) -> None:
    gw, seen = proxy
    response = await gw.client.options("/api/items", headers=preflight(ALLOWED))
    assert response.status == 204
    got = cors_headers(response)
    assert got["Access-Control-Allow-Origin"] == ALLOWED
    assert "GET" in got["Access-Control-Allow-Methods"]
    assert "Authorization" in got["Access-Control-Allow-Headers"]
    assert got["Access-Control-Max-Age"] == "120"
    assert "Access-Control-Allow-Credentials" not in got
    assert "Origin" in response.headers["Vary"]
    assert seen == []  # the upstream never sees it
    assert preflights_counted(gw, "proxy", "allowed") == 1


@pytest.mark.parametrize("sent", [
    preflight(OTHER), preflight("null"), preflight(ALLOWED, method="PURGE"),
    preflight(ALLOWED, headers="authorization, x-secret"),
    preflight(ALLOWED + "/"), preflight(ALLOWED.upper()),
], ids=["other_origin", "null_origin", "method", "header", "trailing_slash", "upper_case"])
async def test_proxy_refuses_other_preflights_without_cors_headers(
    proxy: tuple[Running, list[web.Request]], sent: dict[str, str]
) -> None:
    gw, seen = proxy
    response = await gw.client.options("/api/items", headers=sent)
    assert response.status == 401  # decided as any other request: no token
    assert (await response.json())["reason"] == "missing_token"
    assert cors_headers(response) == {}
    assert seen == []
    assert preflights_counted(gw, "proxy", "refused") == 1


async def test_per_route_override_decides_the_preflight_of_its_route(
    proxy: tuple[Running, list[web.Request]]
) -> None:
    gw, _ = proxy
    allowed = await gw.client.options("/admin/users", headers=preflight(ALLOWED, "DELETE"))
    assert allowed.status == 204
    assert allowed.headers["Access-Control-Allow-Methods"] == "DELETE"
    refused = await gw.client.options("/api/items", headers=preflight(ALLOWED, "DELETE",
                                                                      headers=""))
    assert refused.status == 204  # DELETE is in the gateway-wide defaults too
    put = await gw.client.options("/admin/users", headers=preflight(ALLOWED, "PUT"))
    assert put.status == 401 and cors_headers(put) == {}
    assert (await gw.client.options("/api/items", headers=preflight(ALLOWED, "PUT"))).status == 204


async def test_proxied_response_to_an_allowed_origin_carries_the_gateways_cors_headers(
    clerk: DevIssuer, proxy: tuple[Running, list[web.Request]]
) -> None:
    gw, seen = proxy
    response = await gw.get("/api/items", clerk.token(), headers={"Origin": ALLOWED})
    assert response.status == 200
    got = cors_headers(response)
    assert got["Access-Control-Allow-Origin"] == ALLOWED  # the upstream's `*` is replaced
    assert response.headers.getall("Access-Control-Allow-Origin") == [ALLOWED]
    assert "X-Request-Id" in got["Access-Control-Expose-Headers"]
    assert response.headers["Vary"] == "Accept-Encoding, Origin"
    assert len(seen) == 1


async def test_proxied_response_to_another_origin_carries_no_cors_header(
    clerk: DevIssuer, proxy: tuple[Running, list[web.Request]]
) -> None:
    gw, _ = proxy
    response = await gw.get("/api/items", clerk.token(), headers={"Origin": OTHER})
    assert response.status == 200
    assert cors_headers(response) == {}  # the upstream's own `*` is removed too


@pytest.mark.parametrize("origin,expected", [(ALLOWED, ALLOWED), (OTHER, None)])
async def test_gateway_refusals_carry_cors_headers_for_allowed_origins_only(
    clerk: DevIssuer, proxy: tuple[Running, list[web.Request]], origin: str,
    expected: str | None,
) -> None:
    gw, _ = proxy
    missing = await gw.get("/api/items", headers={"Origin": origin})
    assert missing.status == 401
    assert missing.headers.get("Access-Control-Allow-Origin") == expected
    forbidden = await gw.client.post("/admin/users", headers={
        "Origin": origin, "Authorization": f"Bearer {clerk.token(org_id='o', role='member')}"})
    assert forbidden.status == 403
    assert forbidden.headers.get("Access-Control-Allow-Origin") == expected


async def test_unavailable_keys_answer_carries_cors_headers(
    clerk: DevIssuer, make_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    url, _ = await _cors_upstream(aiohttp_server)
    closed = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    gw = await make_gateway({"GATEWAY_UPSTREAM": url, "CLERK_AUTHORIZED_PARTIES": ALLOWED,
                             "CLERK_JWKS_URL": closed})
    response = await gw.get("/api/items", clerk.token(), headers={"Origin": ALLOWED})
    assert response.status == 503
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]


async def test_disabled_cors_leaves_the_upstreams_headers_alone(
    make_gateway: GatewayFactory, aiohttp_server: Any, clerk: DevIssuer
) -> None:
    url, seen = await _cors_upstream(aiohttp_server)
    gw = await make_gateway({"GATEWAY_UPSTREAM": url, "CLERK_AUTHORIZED_PARTIES": ALLOWED},
                            {"cors": {"enabled": False}})
    response = await gw.get("/api/items", clerk.token(), headers={"Origin": OTHER})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    refused = await gw.client.options("/api/items", headers=preflight(ALLOWED))
    assert refused.status == 401
    assert seen and len(seen) == 1


# --------------------------------------------------------------------- forward-auth mode


@pytest.fixture(params=["fast_door", "aiohttp_door"])
async def forward(request: pytest.FixtureRequest, make_gateway: GatewayFactory) -> Running:
    fast = request.param == "fast_door"
    return await make_gateway({"CLERK_AUTHORIZED_PARTIES": ALLOWED},
                              {"forward_auth": {"fast_path": fast}})


def forwarded(method: str, uri: str, extra: dict[str, str]) -> dict[str, str]:
    """Headers as Traefik or Caddy send them for the client's request."""
    return {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri, **extra}


async def test_forward_auth_lets_an_allowed_preflight_through_without_a_token(
    forward: Running
) -> None:
    response = await forward.get("/", headers=forwarded("OPTIONS", "/api/items",
                                                        preflight(ALLOWED)))
    assert response.status == 200
    assert "X-User-Id" not in response.headers  # no identity: nobody signed in
    assert preflights_counted(forward, "forward_auth", "allowed") == 1
    forward.gateway.metrics.flush()
    assert forward.gateway.registry.get_sample_value(
        "clerk_gateway_decisions_total",
        {"door": "forward_auth", "route": "default", "outcome": "allow",
         "reason": "preflight"}) == 1


@pytest.mark.parametrize("sent", [
    preflight(OTHER), preflight(ALLOWED, method="PURGE"),
    preflight(ALLOWED, headers="x-secret"),
], ids=["other_origin", "method", "header"])
async def test_forward_auth_decides_other_preflights_as_any_request(
    forward: Running, sent: dict[str, str]
) -> None:
    response = await forward.get("/", headers=forwarded("OPTIONS", "/api/items", sent))
    assert response.status == 401
    assert (await response.json())["reason"] == "missing_token"
    assert cors_headers(response) == {}
    assert preflights_counted(forward, "forward_auth", "refused") == 1


@pytest.mark.parametrize("origin,expected", [(ALLOWED, ALLOWED), (OTHER, None)])
async def test_forward_auth_refusals_carry_cors_headers_for_allowed_origins_only(
    forward: Running, origin: str, expected: str | None
) -> None:
    response = await forward.get("/", headers=forwarded("GET", "/api/items",
                                                        {"Origin": origin}))
    assert response.status == 401
    assert response.headers.get("Access-Control-Allow-Origin") == expected
    if expected:
        assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]


async def test_forward_auth_allow_answer_has_no_cors_headers(
    clerk: DevIssuer, forward: Running
) -> None:
    # Callers copy only identity headers from a 2xx: CORS of the app's answer is the app's.
    response = await forward.get("/", clerk.token(), headers=forwarded(
        "GET", "/api/items", {"Origin": ALLOWED}))
    assert response.status == 200
    assert cors_headers(response) == {}


# ------------------------------------------------------------------------------- hostile input

_POLICY = CorsPolicy(load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                                    "CLERK_AUTHORIZED_PARTIES": ALLOWED}).cors)
_header_text = st.text(st.characters(codec="latin-1"), max_size=80)


@given(origin=_header_text, method=_header_text, asked=_header_text)
def test_only_the_exact_allowed_origin_ever_gets_cors_headers(
    origin: str, method: str, asked: str
) -> None:
    sent = {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": asked}
    allowed = _POLICY.allows_preflight(sent, "default")
    headers = _POLICY.response_headers(origin, "default")
    if origin != ALLOWED:
        assert not allowed
        assert headers == []
    else:
        assert headers[0] == ("Access-Control-Allow-Origin", ALLOWED)


async def test_a_reload_swaps_the_allowed_origins(
    clerk: DevIssuer, proxy: tuple[Running, list[web.Request]], tmp_path: Any
) -> None:
    import yaml

    gw, _ = proxy
    assert (await gw.client.options("/api", headers=preflight(OTHER))).status == 401
    path = tmp_path / "reloaded.yaml"
    path.write_text(yaml.safe_dump({"cors": {"allowed_origins": [OTHER]}}))
    new = load_settings({"CLERK_ISSUER": clerk.issuer, "GATEWAY_UPSTREAM": gw.settings.upstream
                         or ""}, str(path))
    await gw.gateway.reload(new)
    now_allowed = await gw.client.options("/api", headers=preflight(OTHER))
    assert now_allowed.status == 204
    assert now_allowed.headers["Access-Control-Allow-Origin"] == OTHER
    assert (await gw.client.options("/api", headers=preflight(ALLOWED))).status == 401
