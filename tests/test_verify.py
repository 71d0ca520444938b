"""Every token rejection reason has its own test, through the forward-auth door."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from gateway.devissuer import DevIssuer, SigningKey
from tests.conftest import GatewayFactory, Running


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"sig") -> str:
    """A compact JWT with arbitrary header and claims and a meaningless signature."""
    return ".".join((b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()),
                     b64(signature)))


async def reason_of(gw: Running, token: str) -> tuple[int, str]:
    response = await gw.get("/", token)
    body = await response.json()
    echoed = {k: v for k, v in body.items() if k != "request_id"}  # random hex may match
    assert token not in json.dumps(echoed)
    return response.status, body["reason"]


@pytest.fixture
async def gw(make_gateway: GatewayFactory) -> Running:
    return await make_gateway()


async def test_valid_token_is_accepted(clerk: DevIssuer, gw: Running) -> None:
    assert (await gw.get("/", clerk.token())).status == 200


@pytest.mark.parametrize("token", [
    "abc", "a.b", "a.b.c.d", "a.b.c.d.e", "..", "Zm9v.YmFy.", "W10.e30.e30",
    "!!!.e30.c2ln", "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0=.c2ln",
])
async def test_malformed_tokens(gw: Running, token: str) -> None:
    assert await reason_of(gw, token) == (401, "malformed_token")


async def test_jwe_five_part_token_is_malformed(clerk: DevIssuer, gw: Running) -> None:
    parts = clerk.token().split(".")
    assert await reason_of(gw, ".".join([*parts, "x", "y"])) == (401, "malformed_token")


async def test_duplicate_json_keys_are_malformed(clerk: DevIssuer, gw: Running) -> None:
    header = b64(json.dumps({"alg": "RS256", "kid": clerk.key.kid}).encode())
    payload = b64(b'{"iss":"x","sub":"a","sub":"b","exp":9999999999}')
    assert await reason_of(gw, f"{header}.{payload}.c2ln") == (401, "malformed_token")


async def test_oversized_token_is_refused_before_parsing(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config={"verification": {"max_token_bytes": 4096}})
    assert await reason_of(gw, "a" * 5000) == (401, "token_too_large")


async def test_token_without_issuer_is_refused(gw: Running) -> None:
    assert await reason_of(gw, "e30.e30.e30") == (401, "wrong_issuer")


async def test_empty_bearer_is_malformed(gw: Running) -> None:
    response = await gw.get("/", headers={"Authorization": "Bearer   "})
    assert (await response.json())["reason"] == "malformed_token"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "HS256", "RS384", "ES256"])
async def test_algorithms_outside_the_allow_list(clerk: DevIssuer, gw: Running, alg: str) -> None:
    token = forge({"alg": alg, "kid": clerk.key.kid, "typ": "JWT"}, clerk.claims())
    assert await reason_of(gw, token) == (401, "unsupported_algorithm")


async def test_hs256_signed_with_the_public_key_is_refused(clerk: DevIssuer, gw: Running) -> None:
    pem = clerk.key.public_pem().encode()
    header = b64(json.dumps({"alg": "HS256", "kid": clerk.key.kid}).encode())
    payload = b64(json.dumps(clerk.claims()).encode())
    import hashlib
    import hmac

    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert await reason_of(gw, f"{header}.{payload}.{b64(sig)}") == (401, "unsupported_algorithm")


async def test_crit_header_is_refused(clerk: DevIssuer, gw: Running) -> None:
    token = clerk.sign(clerk.claims(), headers={"crit": ["exp"]})
    assert await reason_of(gw, token) == (401, "unsupported_header")


async def test_missing_kid_is_refused(clerk: DevIssuer, gw: Running) -> None:
    token = jwt.encode(clerk.claims(), clerk.key.private, algorithm="RS256")
    assert await reason_of(gw, token) == (401, "missing_key_id")


async def test_unknown_kid_is_refused(clerk: DevIssuer, gw: Running) -> None:
    stranger = SigningKey(kid="ins_unknown")
    token = clerk.sign(clerk.claims(), key=stranger)
    assert await reason_of(gw, token) == (401, "unknown_key")


async def test_signature_by_another_key_with_a_known_kid(clerk: DevIssuer, gw: Running) -> None:
    impostor = SigningKey(kid=clerk.key.kid)
    token = clerk.sign(clerk.claims(), key=impostor)
    assert await reason_of(gw, token) == (401, "bad_signature")


async def test_tampered_payload_is_a_bad_signature(clerk: DevIssuer, gw: Running) -> None:
    header, _, signature = clerk.token(sub="user_a").split(".")
    payload = b64(json.dumps(clerk.claims(sub="user_admin")).encode())
    assert await reason_of(gw, f"{header}.{payload}.{signature}") == (401, "bad_signature")


async def test_expired(clerk: DevIssuer, gw: Running) -> None:
    assert await reason_of(gw, clerk.token(lifetime=-10)) == (401, "expired")


async def test_expiry_within_leeway_is_accepted(clerk: DevIssuer, gw: Running) -> None:
    assert (await gw.get("/", clerk.token(lifetime=-2))).status == 200


async def test_missing_exp_is_invalid(clerk: DevIssuer, gw: Running) -> None:
    claims = clerk.claims()
    del claims["exp"]
    assert await reason_of(gw, clerk.sign(claims)) == (401, "invalid_claims")


@pytest.mark.parametrize("exp", ["9999999999", True, None, [1], {"a": 1}])
async def test_exp_of_the_wrong_type_is_invalid(clerk: DevIssuer, gw: Running, exp: Any) -> None:
    claims = clerk.claims()
    claims["exp"] = exp
    if exp is None:
        claims["exp"] = {"nested": None}
    assert await reason_of(gw, clerk.sign(claims)) == (401, "invalid_claims")


async def test_nbf_in_the_future(clerk: DevIssuer, gw: Running) -> None:
    token = clerk.token(nbf=int(time.time()) + 60)
    assert await reason_of(gw, token) == (401, "not_yet_valid")


async def test_iat_in_the_future(clerk: DevIssuer, gw: Running) -> None:
    token = clerk.token(iat=int(time.time()) + 60)
    assert await reason_of(gw, token) == (401, "not_yet_valid")


@pytest.mark.parametrize("iss", ["https://evil.example", "{issuer}/", "{ISSUER}", "", None])
async def test_wrong_issuer(clerk: DevIssuer, gw: Running, iss: Any) -> None:
    claims = clerk.claims()
    if iss is None:
        del claims["iss"]
    else:
        claims["iss"] = iss.replace("{issuer}", clerk.issuer).replace(
            "{ISSUER}", clerk.issuer.upper())
    assert await reason_of(gw, clerk.sign(claims)) == (401, "wrong_issuer")


async def test_authorized_parties(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway({"CLERK_AUTHORIZED_PARTIES": "https://app.example,https://b.example"})
    assert (await gw.get("/", clerk.token(azp="https://app.example"))).status == 200
    assert await reason_of(gw, clerk.token(azp="https://evil.example")) == (
        401, "wrong_authorized_party")
    assert await reason_of(gw, clerk.token(azp=None)) == (401, "wrong_authorized_party")


async def test_audience_when_configured(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config={"issuers": [
        {"name": "clerk", "issuer": clerk.issuer, "audiences": ["api://orders"]}]},
        issuer_env=False)
    assert (await gw.get("/", clerk.token(aud="api://orders"))).status == 200
    assert (await gw.get("/", clerk.token(aud=["x", "api://orders"]))).status == 200
    assert await reason_of(gw, clerk.token(aud="api://other")) == (401, "wrong_audience")
    assert await reason_of(gw, clerk.token()) == (401, "wrong_audience")


async def test_maximum_lifetime(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config={"issuers": [
        {"name": "clerk", "issuer": clerk.issuer, "max_token_lifetime_seconds": 120}]},
        issuer_env=False)
    assert (await gw.get("/", clerk.token(lifetime=60))).status == 200
    assert await reason_of(gw, clerk.token(lifetime=3600)) == (401, "lifetime_too_long")


async def test_pending_session_is_refused_by_default(clerk: DevIssuer, gw: Running) -> None:
    assert await reason_of(gw, clerk.token(sts="pending")) == (401, "session_pending")


async def test_pending_session_accepted_when_configured(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config={"issuers": [
        {"name": "clerk", "issuer": clerk.issuer, "accept_pending_sessions": True}]},
        issuer_env=False)
    assert (await gw.get("/", clerk.token(sts="pending"))).status == 200


@pytest.mark.parametrize("claims", [
    {"sub": None}, {"sub": 12.5}, {"sub": "user\r\nX-Role: org:admin"},
    {"o": "org_1"}, {"o": {"id": "org\n1"}}, {"v": "2"},
    {"o": {"id": "org_1", "per": "read", "fpm": "1,1"}, "fea": "o:a"},
])
async def test_unusable_claims(clerk: DevIssuer, gw: Running, claims: dict[str, Any]) -> None:
    base = clerk.claims()
    base.update(claims)
    if base.get("sub") is None:
        base.pop("sub")
    assert await reason_of(gw, clerk.sign(base)) == (401, "invalid_claims")


async def test_embedded_keys_in_the_header_are_never_used(clerk: DevIssuer, gw: Running) -> None:
    attacker = SigningKey(kid=clerk.key.kid)
    token = clerk.sign(clerk.claims(), key=attacker, headers={
        "jwk": attacker.jwk(), "jku": "http://127.0.0.1:1/jwks", "x5u": "http://127.0.0.1:1/x"})
    assert await reason_of(gw, token) == (401, "bad_signature")


async def test_a_token_costs_one_signature_check(clerk: DevIssuer, gw: Running) -> None:
    token = clerk.token()
    for _ in range(5):
        assert (await gw.get("/", token)).status == 200
    registry = gw.gateway.registry
    lookups = "clerk_gateway_token_cache_lookups_total"
    assert registry.get_sample_value(lookups, {"result": "miss"}) == 1
    assert registry.get_sample_value(lookups, {"result": "hit"}) == 4


async def test_expiry_is_checked_on_every_cache_hit(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    offset = [0.0]
    gw = await make_gateway(clock=lambda: time.time() + offset[0])
    token = clerk.token(lifetime=60)
    assert (await gw.get("/", token)).status == 200
    offset[0] = 120
    assert await reason_of(gw, token) == (401, "expired")


async def test_decisions_are_counted_by_reason(clerk: DevIssuer, gw: Running) -> None:
    await gw.get("/", clerk.token())
    await gw.get("/", clerk.token(lifetime=-60))
    await gw.get("/")
    registry = gw.gateway.registry
    name = "clerk_gateway_decisions_total"
    labels = {"door": "forward_auth", "route": "default"}
    assert registry.get_sample_value(name, {**labels, "outcome": "allow", "reason": "ok"}) == 1
    assert registry.get_sample_value(name, {**labels, "outcome": "deny", "reason": "expired"}) == 1
    assert registry.get_sample_value(
        name, {**labels, "outcome": "deny", "reason": "missing_token"}) == 1
