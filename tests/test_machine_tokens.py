"""Issue 14: Clerk machine credentials, accepted where a route accepts them, refused elsewhere.

The fake Clerk (gateway/devissuer.py) is a real HTTP server: it mints every credential type,
answers Clerk's verify endpoints and counts each call, so "no network call" is asserted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, load_settings
from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running
from tests.machine_support import (
    ALL_TYPES,
    ROUTES,
    Clock,
    machine_env,
    machine_gateway,
    verify_calls,
)

TYPE_HEADERS = ("X-Token-Type", "X-Scopes", "X-Machine-Id", "X-User-Id", "X-Org-Id")


@pytest.fixture
async def gw(make_gateway: GatewayFactory, clerk: DevIssuer) -> Running:
    return await machine_gateway(make_gateway, clerk)


def minted(clerk: DevIssuer) -> dict[str, tuple[str, str, dict[str, str | None]]]:
    """One credential of each type: (token, the route accepting it, its expected headers)."""
    return {
        "session_token": (clerk.token(), "/session", {
            "X-Token-Type": "session_token", "X-User-Id": "user_2demo", "X-Scopes": None,
            "X-Machine-Id": None}),
        "jwt_template": (clerk.template_token(sub="user_tpl"), "/templates", {
            "X-Token-Type": "jwt_template", "X-User-Id": "user_tpl", "X-Machine-Id": None}),
        "m2m_jwt": (clerk.m2m_jwt("mch_jwt", scopes="read write"), "/m2m", {
            "X-Token-Type": "m2m_token", "X-Machine-Id": "mch_jwt", "X-Scopes": "read,write",
            "X-User-Id": None, "X-Org-Id": None}),
        "m2m_opaque": (clerk.m2m_token("mch_opaque", scopes=("jobs",)), "/m2m", {
            "X-Token-Type": "m2m_token", "X-Machine-Id": "mch_opaque", "X-Scopes": "jobs",
            "X-User-Id": None}),
        "api_key_user": (clerk.api_key("user_k", scopes=("read",)), "/keys", {
            "X-Token-Type": "api_key", "X-User-Id": "user_k", "X-Scopes": "read",
            "X-Org-Id": None, "X-Machine-Id": None}),
        "api_key_org": (clerk.api_key("org_k", scopes=("read", "write")), "/keys", {
            "X-Token-Type": "api_key", "X-Org-Id": "org_k", "X-User-Id": None,
            "X-Scopes": "read,write"}),
        "oauth_opaque": (clerk.oauth_token("user_o", scopes=("profile", "email")), "/oauth", {
            "X-Token-Type": "oauth_token", "X-User-Id": "user_o", "X-Scopes": "profile,email"}),
        "oauth_jwt": (clerk.oauth_jwt("user_oj", scope="profile email"), "/oauth", {
            "X-Token-Type": "oauth_token", "X-User-Id": "user_oj",
            "X-Scopes": "profile,email"}),
    }


KINDS = ("session_token", "jwt_template", "m2m_jwt", "m2m_opaque", "api_key_user",
         "api_key_org", "oauth_opaque", "oauth_jwt")


@pytest.mark.parametrize("kind", KINDS)
async def test_every_type_is_accepted_where_its_route_accepts_it(
    clerk: DevIssuer, gw: Running, kind: str
) -> None:
    token, path, expected = minted(clerk)[kind]
    for where in (path, "/any/thing"):
        for _ in range(2):  # the second answer comes from the caches (the fast door)
            response = await gw.get(where, token)
            assert response.status == 200, await response.text()
            for header, value in expected.items():
                assert response.headers.get(header) == value, header


@pytest.mark.parametrize("kind", KINDS)
async def test_every_type_is_refused_where_its_route_does_not_accept_it_without_a_call(
    clerk: DevIssuer, gw: Running, kind: str
) -> None:
    token, path, _ = minted(clerk)[kind]
    others = [r["path_prefix"] for r in ROUTES[:5] if r["path_prefix"] != path]
    calls = verify_calls(clerk)
    for where in others:
        response = await gw.get(where, token)
        body = await response.json()
        assert response.status == 401, body
        assert body["reason"] == "token_type_not_accepted"
        assert token not in json.dumps(body)
    assert verify_calls(clerk) == calls


async def test_a_type_refused_after_it_was_cached_elsewhere_stays_refused(
    clerk: DevIssuer, gw: Running
) -> None:
    key = clerk.api_key("user_k")
    assert (await gw.get("/keys", key)).status == 200
    for _ in range(3):
        response = await gw.get("/session", key)
        assert (response.status, (await response.json())["reason"]) == (
            401, "token_type_not_accepted")
    assert verify_calls(clerk) == 1


async def test_by_default_only_session_tokens_pass_and_machines_cost_no_call(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=machine_env(clerk))
    assert (await gw.get("/", clerk.token())).status == 200
    for token in (clerk.api_key(), clerk.m2m_token(), clerk.oauth_token(), "ak_garbage",
                  clerk.m2m_jwt(), clerk.oauth_jwt(), clerk.template_token()):
        response = await gw.get("/", token)
        assert (response.status, (await response.json())["reason"]) == (
            401, "wrong_token_type"), token
    assert verify_calls(clerk) == 0


async def test_revoked_and_expired_machine_tokens_are_denied(
    clerk: DevIssuer, gw: Running
) -> None:
    revoked = clerk.api_key("user_r")
    clerk.revoke_machine_token(revoked)
    expired = clerk.m2m_token("mch_old", lifetime=-10)
    garbage = "oat_" + "x" * 30
    for token, path, reason in ((revoked, "/keys", "revoked"), (expired, "/m2m", "expired"),
                                (garbage, "/oauth", "invalid_credential")):
        for _ in range(2):
            response = await gw.get(path, token)
            assert (response.status, (await response.json())["reason"]) == (401, reason)
    assert verify_calls(clerk) == 3  # each answer remembered


async def test_a_key_revoked_later_is_denied_once_its_verdict_is_stale(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clock = Clock()
    gw = await machine_gateway(make_gateway, clerk, clock=clock,
                               machine_tokens={"cache_ttl_seconds": 30})
    key = clerk.api_key("user_r")
    assert (await gw.get("/keys", key)).status == 200
    clerk.revoke_machine_token(key)
    assert (await gw.get("/keys", key)).status == 200  # within the cache TTL
    clock.advance(31)
    response = await gw.get("/keys", key)
    assert (response.status, (await response.json())["reason"]) == (401, "revoked")
    assert clerk.hits["api_keys_verify"] == 2


async def test_a_thousand_requests_with_one_api_key_make_one_call_until_it_expires(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clock = Clock()
    gw = await machine_gateway(make_gateway, clerk, clock=clock,
                               machine_tokens={"cache_ttl_seconds": 60})
    key = clerk.api_key("user_many", scopes=("read",))
    for _ in range(1000):
        response = await gw.get("/keys", key)
        assert response.status == 200
        assert response.headers["X-User-Id"] == "user_many"
    assert clerk.hits["api_keys_verify"] == 1
    clock.advance(61)
    assert (await gw.get("/keys", key)).status == 200
    assert clerk.hits["api_keys_verify"] == 2


async def test_a_key_is_not_kept_past_its_own_expiration(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clock = Clock()
    gw = await machine_gateway(make_gateway, clerk, clock=clock,
                               machine_tokens={"cache_ttl_seconds": 3600})
    key = clerk.api_key("user_short", lifetime=20)
    assert (await gw.get("/keys", key)).status == 200
    clock.advance(30)
    response = await gw.get("/keys", key)
    assert (response.status, (await response.json())["reason"]) == (401, "expired")


async def test_concurrent_requests_with_one_new_key_share_one_call(
    clerk: DevIssuer, gw: Running
) -> None:
    key = clerk.api_key("user_burst")
    clerk.delay = 0.3
    responses = await asyncio.gather(*(gw.get("/keys", key) for _ in range(25)))
    assert [r.status for r in responses] == [200] * 25
    assert clerk.hits["api_keys_verify"] == 1


async def test_garbage_is_cached_negatively(clerk: DevIssuer, gw: Running) -> None:
    for _ in range(10):
        response = await gw.get("/keys", "ak_not_a_real_key")
        assert (response.status, (await response.json())["reason"]) == (
            401, "invalid_credential")
    assert clerk.hits["api_keys_verify"] == 1


def from_client(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def test_a_flood_of_garbage_keys_from_one_client_is_throttled_not_other_clients(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await machine_gateway(make_gateway, clerk, machine_tokens={
        "client_lookup_burst": 10, "client_lookups_per_second": 0.01})
    known = clerk.api_key("user_known")
    assert (await gw.get("/keys", known, headers=from_client("10.0.0.1"))).status == 200
    statuses = []
    for i in range(60):
        response = await gw.get("/keys", f"ak_garbage_{i:04d}", headers=from_client("10.0.0.1"))
        body = await response.json()
        statuses.append((response.status, body["reason"]))
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert body["error"] == "rate_limited"
    assert statuses[:9] == [(401, "invalid_credential")] * 9
    assert statuses[9:] == [(429, "token_lookups_exhausted")] * 51
    assert clerk.hits["api_keys_verify"] == 10  # the budget bounds the calls
    # The flooding client's own known key still works, and so do other clients' new keys.
    assert (await gw.get("/keys", known, headers=from_client("10.0.0.1"))).status == 200
    for i in range(5):
        other = clerk.api_key(f"user_other{i}")
        response = await gw.get("/keys", other, headers=from_client(f"10.0.1.{i}"))
        assert response.status == 200, await response.text()


async def test_a_429_from_clerk_stops_calls_until_retry_after(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clock = Clock()
    gw = await machine_gateway(make_gateway, clerk, clock=clock)
    clerk.machine_fail_status, clerk.retry_after = 429, 30
    for i in range(3):
        response = await gw.get("/keys", clerk.api_key(f"user_{i}"))
        assert (response.status, (await response.json())["reason"]) == (
            503, "token_verification_unavailable")
        assert 1 <= int(response.headers["Retry-After"]) <= 30
    assert clerk.hits["api_keys_verify"] == 1
    clerk.machine_fail_status = None
    clock.advance(31)
    assert (await gw.get("/keys", clerk.api_key("user_back"))).status == 200
    assert clerk.hits["api_keys_verify"] == 2


async def test_an_outage_keeps_known_keys_for_the_grace_period_then_fails_closed(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clock = Clock()
    gw = await machine_gateway(make_gateway, clerk, clock=clock, machine_tokens={
        "cache_ttl_seconds": 10, "grace_seconds": 30})
    key = clerk.api_key("user_g")
    assert (await gw.get("/keys", key)).status == 200
    clerk.machine_fail_status = 500
    clock.advance(20)  # stale, within grace
    assert (await gw.get("/keys", key)).status == 200
    clock.advance(25)  # past grace
    response = await gw.get("/keys", key)
    assert (response.status, (await response.json())["reason"]) == (
        503, "token_verification_unavailable")
    fresh = await gw.get("/keys", clerk.api_key("user_new"))
    assert fresh.status == 503  # a key never verified is never let in


async def test_fail_open_is_explicit_and_metered(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clock = Clock()
    gw = await machine_gateway(make_gateway, clerk, clock=clock, machine_tokens={
        "cache_ttl_seconds": 10, "grace_seconds": 0, "failure_mode": "fail_open"})
    key = clerk.api_key("user_fo")
    assert (await gw.get("/keys", key)).status == 200
    clerk.machine_fail_status = 502
    clock.advance(15)
    assert (await gw.get("/keys", key)).status == 200
    assert gw.gateway.registry.get_sample_value(
        "clerk_gateway_fail_open_total", {"component": "machine_tokens"}) == 1.0
    assert (await gw.get("/keys", clerk.api_key("user_unknown"))).status == 503


@pytest.mark.parametrize("cookie", ["__session", "__session_abcdefgh"])
@pytest.mark.parametrize("maker", ["api_key", "m2m_token", "oauth_token", "m2m_jwt", "oauth_jwt"])
async def test_machine_credentials_are_never_read_from_a_cookie(
    clerk: DevIssuer, gw: Running, maker: str, cookie: str
) -> None:
    token: str = getattr(clerk, maker)()
    response = await gw.get("/any", headers={"Cookie": f"{cookie}={token}"})
    body = await response.json()
    assert (response.status, body["reason"]) == (401, "token_type_not_accepted")
    assert verify_calls(clerk) == 0
    again = await gw.get("/any", headers={"Cookie": f"{cookie}={token}"})
    assert again.status == 401


async def test_a_machine_never_holds_a_role_unless_a_claim_says_so(
    clerk: DevIssuer, gw: Running
) -> None:
    plain = clerk.api_key("org_acme", scopes=("admin",))
    response = await gw.get("/admin", plain)
    assert (response.status, (await response.json())["reason"]) == (403, "missing_role")
    m2m = clerk.m2m_jwt("mch_1", scopes="admin")
    assert (await gw.get("/admin", m2m)).status == 403
    claimed = clerk.api_key("org_acme", claims={"org_role": "admin"})
    allowed = await gw.get("/admin", claimed)
    assert allowed.status == 200
    assert allowed.headers["X-Role"] == "org:admin"


async def test_scope_requirements(clerk: DevIssuer, gw: Running) -> None:
    for token, status in ((clerk.api_key(scopes=("read",)), 403),
                          (clerk.api_key(scopes=("read", "write")), 200),
                          (clerk.m2m_jwt(scopes="admin"), 200),
                          (clerk.oauth_token(scopes=("profile",)), 403),
                          (clerk.token(), 403)):
        response = await gw.get("/scoped", token)
        assert response.status == status, token
        if status == 403:
            assert (await response.json())["reason"] == "missing_scope"


SPOOFS = {"X-Token-Type": "session_token", "X-Scopes": "admin,write",
          "X-Machine-Id": "mch_evil", "X-User-Id": "user_evil", "X-Org-Id": "org_evil"}


async def test_identity_headers_are_unspoofable_through_the_proxy(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Any
) -> None:
    gw = await machine_gateway(make_gateway, clerk, env={"GATEWAY_UPSTREAM": upstream.url})
    spoofs = {**SPOOFS, "X_Token_Type": "evil", "x-scopes": "evil2", "X-MACHINE-ID": "evil3"}
    key = clerk.api_key("org_real", scopes=("read",))
    for _ in range(2):
        headers = dict(spoofs)
        headers["Authorization"] = f"Bearer {key}"
        response = await gw.client.get("/keys/x", headers=headers)
        assert response.status == 200
        seen = upstream.seen[-1]
        assert seen.normalised("X-Token-Type") == ["api_key"]
        assert seen.normalised("X-Scopes") == ["read"]
        assert seen.normalised("X-Org-Id") == ["org_real"]
        assert seen.normalised("X-Machine-Id") == []
        assert seen.normalised("X-User-Id") == []
    public = await gw.client.get("/keys/x", headers=SPOOFS)
    assert public.status == 401


async def test_identity_headers_can_be_renamed(clerk: DevIssuer,
                                               make_gateway: GatewayFactory) -> None:
    gw = await machine_gateway(make_gateway, clerk, extra={"identity_headers": {
        "token_type": "X-Auth-Kind", "scopes": "X-Auth-Scopes", "machine_id": None}})
    response = await gw.get("/m2m", clerk.m2m_jwt("mch_r", scopes="a b"))
    assert response.headers["X-Auth-Kind"] == "m2m_token"
    assert response.headers["X-Auth-Scopes"] == "a,b"
    assert "X-Machine-Id" not in response.headers and "X-Token-Type" not in response.headers


async def test_metrics_and_access_log_carry_the_token_type(
    clerk: DevIssuer, gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="gateway.access")
    key = clerk.api_key("org_m")
    for _ in range(3):
        assert (await gw.get("/keys", key)).status == 200
    assert (await gw.get("/session", key)).status == 401
    assert (await gw.get("/session", clerk.token())).status == 200
    fields = ("status", "reason", "token_type", "user", "org")
    lines = [tuple(getattr(r, f) for f in fields)
             for r in caplog.records if r.name == "gateway.access"]
    assert lines == [(200, "ok", "api_key", None, "org_m")] * 3 + [
        (401, "token_type_not_accepted", "api_key", None, None),
        (200, "ok", "session_token", "user_2demo", None)]
    assert key not in caplog.text
    registry = gw.gateway.registry
    gw.gateway.metrics.flush()
    sample: Callable[..., float | None] = registry.get_sample_value
    assert sample("clerk_gateway_machine_token_lookups_total",
                  {"token_type": "api_key", "result": "valid"}) == 1.0
    assert sample("clerk_gateway_token_type_decisions_total",
                  {"token_type": "api_key", "outcome": "allow"}) == 3.0
    assert sample("clerk_gateway_token_type_decisions_total",
                  {"token_type": "api_key", "outcome": "deny"}) == 1.0


def write(tmp_path: Any, config: dict[str, Any]) -> str:
    import yaml

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_configuration_problems_are_all_reported(tmp_path: Any) -> None:
    path = write(tmp_path, {
        "token_types": ["session_token", "api_key", "passport"],
        "routes": [{"name": "a", "path_prefix": "/a", "accepts": ["m2m_token"]},
                   {"name": "b", "path_prefix": "/b", "accepts": 7}],
        "machine_tokens": {"failure_mode": "maybe", "grace_seconds": -1, "colour": 1},
    })
    with pytest.raises(ConfigError) as info:
        load_settings({"CLERK_ISSUER": "https://clerk.example.com"}, path)
    text = str(info.value)
    for fragment in ("'passport'", "routes[1].accepts", "failure_mode", "grace_seconds",
                     "machine_tokens.colour"):
        assert fragment in text, fragment


def test_api_keys_need_the_secret_key_and_routes_only_enabled_types(tmp_path: Any) -> None:
    path = write(tmp_path, {
        "token_types": ["session_token", "api_key"],
        "routes": [{"name": "a", "path_prefix": "/a", "accepts": ["m2m_token"]}],
    })
    with pytest.raises(ConfigError) as info:
        load_settings({"CLERK_ISSUER": "https://clerk.example.com"}, path)
    text = str(info.value)
    assert "CLERK_SECRET_KEY" in text
    assert "routes[a].accepts: m2m_token is not enabled by token_types" in text


def test_defaults() -> None:
    settings = load_settings({"CLERK_ISSUER": "https://clerk.example.com"})
    assert settings.token_types == frozenset({"session_token"})
    machine = settings.machine_tokens
    assert (machine.cache_ttl_seconds, machine.negative_ttl_seconds, machine.grace_seconds,
            machine.failure_mode) == (300.0, 30.0, 60.0, "fail_closed")
    assert (machine.client_lookups_per_second, machine.client_lookup_burst,
            machine.lookups_per_second, machine.lookup_burst) == (1.0, 20, 5.0, 50)
    assert settings.identity_headers["token_type"] == "X-Token-Type"
    assert set(ALL_TYPES) >= settings.token_types


# -- every door, hostile answers, hostile tokens ----------------------------------------------


@pytest.mark.parametrize("door", ["fast_door", "aiohttp_door", "proxy"])
async def test_machine_credentials_through_every_door(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Any, door: str
) -> None:
    extra: dict[str, Any] = {}
    env: dict[str, str] = {}
    if door == "aiohttp_door":
        extra = {"forward_auth": {"fast_path": False}}
    elif door == "proxy":
        env = {"GATEWAY_UPSTREAM": upstream.url}
    gw = await machine_gateway(make_gateway, clerk, extra=extra, env=env)
    key = clerk.api_key("org_door", scopes=("write",))
    for _ in range(2):
        allowed = await gw.get("/scoped", key)
        assert allowed.status == 200
        refused = await gw.get("/session", key)
        assert (refused.status, (await refused.json())["reason"]) == (
            401, "token_type_not_accepted")
        cookie = await gw.get("/keys", headers={"Cookie": f"__session={key}"})
        assert (await cookie.json())["reason"] == "token_type_not_accepted"
    if door == "proxy":
        assert upstream.seen[-1].normalised("X-Org-Id") == ["org_door"]
        assert upstream.seen[-1].normalised("X-Token-Type") == ["api_key"]
    else:
        assert allowed.headers["X-Org-Id"] == "org_door"
    assert clerk.hits["api_keys_verify"] == 1


HOSTILE_ANSWERS = [
    b"not json", b"[]", b"null", b'{"subject": 5}', b'{"subject": "user_1\\r\\nX-Evil: 1"}',
    b'{"subject": "admin"}', b'{"subject": ""}', b'{"subject": "user_1", "expiration": "soon"}',
    b'{"subject": "user_1", "expiration": NaN}', b'{"subject": "user_1", "scopes": {"a": 1}}',
    b'{"subject": "user_1", "claims": [1]}', b'{"subject": "user_1", "scopes": ["a,b"]}',
    b'{"subject": "user_\\u00e9"}', b"{" * 5000, b"\xff\xfe",
]


@pytest.mark.parametrize("answer", HOSTILE_ANSWERS)
async def test_a_hostile_backend_answer_never_lets_in_and_never_500s(
    clerk: DevIssuer, gw: Running, answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    clerk.machine_body = answer
    key = clerk.api_key("user_h")
    response = await gw.get("/keys", key)
    body = await response.json()
    assert (response.status, body["reason"]) == (503, "token_verification_unavailable")
    assert clerk.secret_key not in caplog.text and key not in caplog.text


async def test_the_secret_keys_never_reach_the_log(
    clerk: DevIssuer, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    gw = await machine_gateway(make_gateway, clerk, env={"CLERK_API_URL": "http://127.0.0.1:9"})
    for token in (clerk.api_key(), clerk.m2m_token(), clerk.oauth_token()):
        response = await gw.get("/any", token)
        assert response.status == 503
        assert token not in caplog.text
    assert clerk.secret_key not in caplog.text
    assert clerk.machine_secret_key not in caplog.text
    assert "machine token verification unreachable" in caplog.text


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(["ak_", "mt_", "oat_", "AK_", "ak", "mch_", ""]),
       tail=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e),
                    max_size=80))
async def test_arbitrary_opaque_tokens_are_never_allowed_and_never_500(
    clerk: DevIssuer, gw: Running, prefix: str, tail: str
) -> None:
    token = prefix + tail
    response = await gw.get("/any", token, headers={"X-Forwarded-For": "10.9.9.9"})
    assert response.status in (400, 401, 429), await response.text()
    body = await response.json()
    assert set(body) == {"error", "reason", "message", "request_id"}


def test_check_config_shows_the_token_types_and_what_each_route_accepts(tmp_path: Any) -> None:
    from gateway.cli import _describe

    path = write(tmp_path, {"token_types": ALL_TYPES, "routes": ROUTES})
    settings = load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                              "CLERK_SECRET_KEY": "sk_test_x"}, path)
    text = _describe(settings)
    assert "token types: api_key, jwt_template, m2m_token, oauth_token, session_token" in text
    assert "; keys accepts api_key;" in text


async def test_a_reload_changes_the_accepted_types_and_keeps_the_verdicts(
    clerk: DevIssuer, gw: Running, tmp_path: Any
) -> None:
    key = clerk.api_key("user_reload")
    assert (await gw.get("/any", key)).status == 200
    path = write(tmp_path, {"token_types": ["session_token", "api_key"], "routes": [
        {"name": "keys", "path_prefix": "/keys", "accepts": ["api_key"]}]})
    narrower = load_settings({"CLERK_ISSUER": clerk.issuer, **machine_env(clerk)}, path)
    await gw.gateway.reload(narrower)
    assert (await gw.get("/keys", key)).status == 200
    refused = await gw.get("/keys", clerk.m2m_jwt())
    assert (await refused.json())["reason"] == "wrong_token_type"
    assert clerk.hits["api_keys_verify"] == 1  # the verdict outlived the reload


async def test_a_jwt_template_s_custom_claims_are_mapped_by_the_issuer_s_claims(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await machine_gateway(make_gateway, clerk, extra={"issuers": [{
        "name": "clerk", "claims": {"org_id": "/tenant", "org_role": "/grants/role"}}]})
    token = clerk.template_token("user_t", tenant="org_tenant", grants={"role": "org:admin"})
    response = await gw.get("/admin", token)
    assert response.status == 200, await response.text()
    assert response.headers["X-Org-Id"] == "org_tenant"
    assert response.headers["X-Token-Type"] == "jwt_template"
    assert "X-Session-Id" not in response.headers


@pytest.mark.parametrize("trusted", [False, True])
async def test_in_proxy_mode_x_forwarded_for_names_the_client_only_from_a_trusted_proxy(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Any, trusted: bool
) -> None:
    proxy: dict[str, Any] = {"trusted_proxies": ["127.0.0.1/32"]} if trusted else {}
    gw = await machine_gateway(
        make_gateway, clerk, env={"GATEWAY_UPSTREAM": upstream.url}, extra={"proxy": proxy},
        machine_tokens={"client_lookup_burst": 3, "client_lookups_per_second": 0.01})
    statuses = []
    for i in range(6):  # a new claimed address each time
        response = await gw.get("/keys", f"ak_guess_{i}", headers=from_client(f"10.1.0.{i}"))
        statuses.append(response.status)
    if trusted:  # each address has its own budget
        assert statuses == [401] * 6
    else:  # a spoofed X-Forwarded-For does not buy a fresh budget
        assert statuses == [401, 401, 401, 429, 429, 429]
    assert not upstream.seen


@pytest.mark.parametrize("door", ["forward_auth", "proxy"])
async def test_behind_a_chain_of_listed_proxies_each_client_has_its_own_budget(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Any, door: str
) -> None:
    # A load balancer (10.200.0.5, listed) sits in front of the trusted caller: the client is
    # the right-most address that is not a listed proxy, in both doors, never the balancer.
    chain = ["127.0.0.1/32", "10.200.0.0/16"]
    env = {"GATEWAY_UPSTREAM": upstream.url} if door == "proxy" else {}
    extra: dict[str, Any] = ({"proxy": {"trusted_proxies": chain}} if door == "proxy"
                             else {"forward_auth": {"trusted_callers": chain}})
    gw = await machine_gateway(
        make_gateway, clerk, env=env, extra=extra,
        machine_tokens={"client_lookup_burst": 3, "client_lookups_per_second": 0.01})
    statuses = []
    for i in range(6):  # six clients, every one through the same balancer
        response = await gw.get("/keys", f"ak_chain_{i}",
                                headers=from_client(f"203.0.113.{i}, 10.200.0.5"))
        statuses.append(response.status)
    assert statuses == [401] * 6
    statuses = []
    for i in range(5):  # one client guessing: its own budget runs out, the balancer's does not
        response = await gw.get("/keys", f"ak_guess_{i}",
                                headers=from_client("198.51.100.7, 10.200.0.5"))
        statuses.append(response.status)
    assert statuses == [401, 401, 401, 429, 429]


async def test_a_flood_from_many_addresses_is_bounded_for_the_whole_instance(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await machine_gateway(make_gateway, clerk, machine_tokens={
        "lookup_burst": 15, "lookups_per_second": 0.01})
    known = clerk.api_key("user_known")
    assert (await gw.get("/keys", known)).status == 200
    statuses = []
    for i in range(40):  # every request from a new address: no per-client budget runs out
        response = await gw.get("/keys", f"ak_spread_{i:03d}",
                                headers=from_client(f"10.{i // 250}.{i % 250}.9"))
        statuses.append((response.status, (await response.json())["reason"]))
    assert statuses[:14] == [(401, "invalid_credential")] * 14
    assert statuses[14:] == [(429, "token_lookups_exhausted")] * 26
    assert clerk.hits["api_keys_verify"] == 15
    assert (await gw.get("/keys", known)).status == 200  # known keys are not looked up again


def test_the_machine_secret_key_never_shows(tmp_path: Any) -> None:
    from gateway.cli import _describe

    path = write(tmp_path, {"token_types": ALL_TYPES})
    settings = load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                              "CLERK_SECRET_KEY": "sk_test_hidden",
                              "CLERK_MACHINE_SECRET_KEY": "ak_machine_hidden"}, path)
    assert settings.machine_tokens.machine_secret_key is not None
    for text in (repr(settings), str(settings.machine_tokens), _describe(settings)):
        assert "ak_machine_hidden" not in text and "sk_test_hidden" not in text


def test_verdicts_survive_the_bytes_a_shared_store_keeps() -> None:
    from gateway.auth.claims import Identity
    from gateway.auth.verdicts import Verdict, decode, encode
    from gateway.reasons import Reason

    machine = Identity(issuer="https://clerk.example.com", user_id="", expires_at=2e9,
                       org_id="org_1", token_type="api_key", scopes=("read", "write"),
                       token_id="ak_id_1", custom_claims={"tier": {"level": 2}, "tags": [1]})
    for verdict in (Verdict(machine, None, 100.0, 400.0),
                    Verdict(None, Reason.REVOKED, 100.0, 400.0),
                    Verdict(None, Reason.INVALID_CREDENTIAL, 1.5, 31.5)):
        again = decode(encode(verdict))
        assert again == verdict
        if verdict.identity is not None:
            assert again.identity is not None
            assert again.identity.custom_claims == verdict.identity.custom_claims
    for garbage in (b"", b"{}", b"[]", b'{"identity": 1, "reason": null}', b"\xff"):
        with pytest.raises(ValueError):
            decode(garbage)


@pytest.mark.parametrize("kind", ["api_key", "m2m_token", "oauth_token", "m2m_jwt",
                                  "oauth_jwt", "jwt_template"])
async def test_the_dev_issuer_mints_every_type_the_gateway_accepts(
    clerk: DevIssuer, gw: Running, kind: str
) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(
            f"{clerk.issuer}/_demo/credential", params={"type": kind, "scopes": "write"}) as minted:
        token = (await minted.text()).strip()
    response = await gw.get("/any", token)
    assert response.status == 200, await response.text()
    expected = {"m2m_jwt": "m2m_token", "oauth_jwt": "oauth_token"}.get(kind, kind)
    assert response.headers["X-Token-Type"] == expected


async def test_an_m2m_jwt_without_scopes_takes_them_from_aud_as_clerk_does(
    clerk: DevIssuer, gw: Running
) -> None:
    token = clerk.m2m_jwt("mch_caller", aud=["mch_target_1", "mch_target_2"])
    response = await gw.get("/m2m", token)
    assert response.status == 200
    assert response.headers["X-Scopes"] == "mch_target_1,mch_target_2"
