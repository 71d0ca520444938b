"""Token attacks a penetration tester would try: each refused with 401, none ever allowed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth.extract import AmbiguousToken, EmptyToken, TokenExtractor, UnreadableToken
from gateway.auth.verify import TokenRejected
from gateway.config import DEFAULT_TOKEN_SOURCES, ConfigError, load_settings
from gateway.devissuer import DevIssuer, SigningKey
from tests.conftest import GatewayFactory, Running


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode(header: dict[str, Any], claims: dict[str, Any] | bytes) -> str:
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    return f"{b64(json.dumps(header).encode())}.{b64(payload)}"


async def refused(gw: Running, token: str, reason: str | None = None) -> None:
    response = await gw.get("/", token)
    assert response.status == 401, await response.text()
    body = await response.json()
    if reason is not None:
        assert body["reason"] == reason
    assert token not in json.dumps(body)


@pytest.fixture
async def gw(make_gateway: GatewayFactory) -> Running:
    return await make_gateway()


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", " none", ""])
async def test_alg_none_in_any_spelling(clerk: DevIssuer, gw: Running, alg: str) -> None:
    for signature in ("", "AA"):
        token = encode({"alg": alg, "kid": clerk.key.kid}, clerk.claims()) + "." + signature
        await refused(gw, token, "unsupported_algorithm")


@pytest.mark.parametrize("secret_form", ["pem", "jwk"])
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_signed_with_the_public_key(
    clerk: DevIssuer, gw: Running, secret_form: str, alg: str
) -> None:
    secret = (clerk.key.public_pem().encode() if secret_form == "pem"
              else json.dumps(clerk.key.jwk()).encode())
    signing_input = encode({"alg": alg, "kid": clerk.key.kid, "typ": "JWT"}, clerk.claims())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    await refused(gw, f"{signing_input}.{b64(signature)}", "unsupported_algorithm")


def test_hmac_cannot_even_be_configured(tmp_path: Any) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"issuers": [
        {"name": "clerk", "issuer": "https://x.example", "algorithms": ["RS256", "HS256"]}]}))
    with pytest.raises(ConfigError, match="'HS256' is not allowed"):
        load_settings({}, str(path))


@pytest.mark.parametrize("kid", [
    "../../../../etc/passwd", "/dev/null", "' OR '1'='1", "\"; DROP TABLE keys; --",
    "kid\r\nX-Injected: 1", "${jndi:ldap://127.0.0.1/a}", "%00", "k" * 5000, "",
])
async def test_hostile_kids_are_refused_without_fetching(
    clerk: DevIssuer, gw: Running, kid: str
) -> None:
    await gw.get("/", clerk.sign(clerk.claims(), key=SigningKey(kid="ins_prime_cooldown")))
    fetches = clerk.hits["jwks"]
    token = clerk.sign(clerk.claims(), key=SigningKey(kid=kid)) if len(kid) < 300 else \
        encode({"alg": "RS256", "kid": kid}, clerk.claims()) + ".AA"
    await refused(gw, token)
    assert clerk.hits["jwks"] == fetches


@pytest.mark.parametrize("kid", [123, None, ["a"], {"a": 1}, True])
async def test_kid_of_the_wrong_type(clerk: DevIssuer, gw: Running, kid: Any) -> None:
    header = {"alg": "RS256"} if kid is None else {"alg": "RS256", "kid": kid}
    await refused(gw, encode(header, clerk.claims()) + ".AA")


@pytest.mark.parametrize("parameter", ["jwk", "jku", "x5u", "x5c"])
async def test_embedded_key_parameters_are_never_used(
    clerk: DevIssuer, gw: Running, aiohttp_server: Any, parameter: str
) -> None:
    attacker = SigningKey(kid="ins_attacker")
    from aiohttp import web

    hits = []

    async def jwks(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"keys": [attacker.jwk()]})

    app = web.Application()
    app.router.add_get("/{tail:.*}", jwks)
    server = await aiohttp_server(app)
    values = {"jwk": attacker.jwk(), "jku": str(server.make_url("/jwks")),
              "x5u": str(server.make_url("/cert")), "x5c": ["MIIBIjANBgkq"]}
    token = clerk.sign(clerk.claims(), key=attacker, headers={parameter: values[parameter]})
    await refused(gw, token)
    assert hits == []


async def test_crit_is_refused(clerk: DevIssuer, gw: Running) -> None:
    await refused(gw, clerk.sign(clerk.claims(), headers={"crit": ["urn:x"], "urn:x": 1}),
                  "unsupported_header")


@pytest.mark.parametrize("token", [
    "a.b.c.d.e", "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", "e30=.e30=.AA==", "e30.e30.AA==",
    "e30..", "....", "e30.e30.A", "é30.e30.AA", "e30.e30.+/AA",
])
async def test_malformed_encodings(gw: Running, token: str) -> None:
    await refused(gw, token, "malformed_token")


async def test_extra_dots_and_whitespace(clerk: DevIssuer, gw: Running) -> None:
    token = clerk.token()
    for variant in (token + ".", "." + token, token.replace(".", "..", 1), token + "\t"):
        response = await gw.get("/", headers={"Authorization": "Bearer " + variant})
        if variant.strip() == token:
            continue  # surrounding whitespace belongs to the header syntax
        assert response.status == 401, variant


async def test_non_ascii_tokens_are_refused(gw: Running) -> None:
    response = await gw.client.get("/", headers={"Authorization": "Bearer \u00e9\u00e9.e30.AA"})
    assert response.status in (400, 401)


@pytest.mark.parametrize("claims", [
    {"exp": "9999999999"}, {"exp": True}, {"exp": 1e400}, {"exp": -1e308}, {"exp": [1]},
    {"nbf": "0"}, {"iat": False}, {"nbf": {"$gt": 0}},
])
async def test_claims_of_the_wrong_type(clerk: DevIssuer, gw: Running, claims: dict[str, Any]
                                        ) -> None:
    base = clerk.claims()
    base.update(claims)
    raw = json.dumps(base).replace("Infinity", "1e400").encode()
    header = encode({"alg": "RS256", "kid": clerk.key.kid}, raw)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = clerk.key.private.sign(header.encode(), padding.PKCS1v15(), hashes.SHA256())
    await refused(gw, f"{header}.{b64(signature)}")


async def test_nan_is_not_json(clerk: DevIssuer, gw: Running) -> None:
    claims = json.dumps(clerk.claims()).replace('"exp": ', '"exp": NaN, "x": ').encode()
    await refused(gw, encode({"alg": "RS256", "kid": clerk.key.kid}, claims) + ".AA",
                  "malformed_token")


async def test_deeply_nested_json_is_refused(clerk: DevIssuer, gw: Running) -> None:
    nested = b'{"iss":"x","a":' + b"[" * 3000 + b"]" * 3000 + b"}"
    await refused(gw, encode({"alg": "RS256", "kid": clerk.key.kid}, nested) + ".AA")


async def test_huge_tokens_are_refused_before_parsing(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config={"verification": {"max_token_bytes": 1024}})
    await refused(gw, "e30." + "A" * 2000 + ".AA", "token_too_large")


async def test_duplicate_claim_keys(clerk: DevIssuer, gw: Running) -> None:
    raw = json.dumps(clerk.claims())[:-1] + ', "sub": "user_admin"}'
    await refused(gw, encode({"alg": "RS256", "kid": clerk.key.kid}, raw.encode()) + ".AA",
                  "malformed_token")
    header = b64(b'{"alg":"RS256","alg":"none","kid":"' + clerk.key.kid.encode() + b'"}')
    await refused(gw, f"{header}.{b64(json.dumps(clerk.claims()).encode())}.AA",
                  "malformed_token")


@pytest.mark.parametrize("iss", ["{i}/", "{I}", " {i}", "{i}#", "{i}/.", "{i}?"])
async def test_issuer_lookalikes(clerk: DevIssuer, gw: Running, iss: str) -> None:
    claims = clerk.claims()
    claims["iss"] = iss.format(i=clerk.issuer, I=clerk.issuer.upper())
    await refused(gw, clerk.sign(claims), "wrong_issuer")


async def test_missing_azp_when_required(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway({"CLERK_AUTHORIZED_PARTIES": "https://app.example"})
    await refused(gw, clerk.token(azp=None), "wrong_authorized_party")
    await refused(gw, clerk.token(azp=["https://app.example"]), "wrong_authorized_party")


async def test_header_and_cookie_disagreeing_follow_the_documented_precedence(
    clerk: DevIssuer, gw: Running
) -> None:
    response = await gw.get("/", clerk.token(lifetime=-60), headers={
        "Cookie": f"__session={clerk.token()}"})
    # The Authorization header wins (as in Clerk's SDKs), even when the cookie is valid.
    assert response.status == 401
    assert (await response.json())["reason"] == "expired"


# --- Property-based: extraction and parsing never crash and never allow without a signature.

EXTRACTOR = TokenExtractor(DEFAULT_TOKEN_SOURCES)
header_values = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=200)


@settings(max_examples=300, deadline=None)
@given(authorization=st.lists(header_values, max_size=3),
       cookies=st.lists(st.text(max_size=80), max_size=3))
def test_extraction_never_crashes(authorization: list[str], cookies: list[str]) -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    headers = CIMultiDictProxy(CIMultiDict([("Authorization", v) for v in authorization]
                                           + [("Cookie", v) for v in cookies]))
    try:
        token = EXTRACTOR.extract(headers)
    except (AmbiguousToken, EmptyToken, UnreadableToken):
        return
    assert token is None or (token.isascii() and token.isprintable() and " " not in token)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_parsing_arbitrary_tokens_never_allows(
    clerk: DevIssuer, gw: Running, data: st.DataObject
) -> None:
    segment = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                      max_size=60)
    json_segment = st.builds(
        lambda value: b64(json.dumps(value).encode()),
        st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=10), lambda children: st.lists(children, max_size=3)
                     | st.dictionaries(st.sampled_from(["alg", "kid", "iss", "exp", "sub", "crit"]),
                                       children, max_size=4), max_leaves=8))
    parts = data.draw(st.lists(segment | json_segment, min_size=1, max_size=5))
    token = ".".join(parts)
    try:
        verified = await gw.gateway.verifier.verify(token)
    except TokenRejected:
        return
    pytest.fail(f"an unsigned token was accepted: {verified}")
