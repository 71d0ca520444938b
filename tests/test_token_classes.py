"""Issue 12.1: a JWT of another class (template, M2M, OAuth, unknown) never passes as a session.

Every class is signed with the instance's real key, so only the classification refuses it;
each is tried through the forward-auth fast door, the aiohttp door and the proxy, twice (the
second time the verified-token cache and the fast door's cached answers would let it in).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm

from gateway.auth.classify import (
    CAT_IGNORE,
    CAT_JWT_TEMPLATE,
    CAT_M2M,
    CAT_SESSION,
    TokenType,
    jwt_token_type,
)
from gateway.auth.verify import TokenRejected
from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running
from tests.proxy_support import Upstream

_RS256 = RSAAlgorithm(RSAAlgorithm.SHA256)
DOORS = ("fast_door", "aiohttp_door", "proxy")
STEADY = {"revocation": {"local_ttl_seconds": 60}}


@pytest.fixture(params=DOORS)
async def door(request: pytest.FixtureRequest, make_gateway: GatewayFactory,
               upstream: Upstream) -> Running:
    """A gateway answering through one of the three doors."""
    if request.param == "fast_door":
        return await make_gateway(config=STEADY)
    if request.param == "aiohttp_door":
        return await make_gateway(config={**STEADY, "forward_auth": {"fast_path": False}})
    return await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url}, config=STEADY)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_raw(clerk: DevIssuer, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Sign with the instance's real key, the header exactly as given (PyJWT edits `typ`)."""
    full = {"alg": "RS256", "kid": clerk.key.kid, **header}
    signing_input = f"{b64(json.dumps(full).encode())}.{b64(json.dumps(claims).encode())}"
    signature = _RS256.sign(signing_input.encode(), clerk.key.private)
    return f"{signing_input}.{b64(signature)}"


def signed(clerk: DevIssuer, header: dict[str, Any], **claims: Any) -> str:
    """A token signed with the instance's real key, with extra protected-header fields."""
    return sign_raw(clerk, header, clerk.claims(**claims))


async def assert_wrong_type(gw: Running, token: str, upstream: Upstream) -> None:
    """Refused with 401 wrong_token_type, twice, never cached, never reaching the upstream."""
    seen = len(upstream.seen)
    for _ in range(2):
        response = await gw.get("/", token)
        body = await response.json()
        assert response.status == 401, body
        assert body["reason"] == "wrong_token_type"
        assert body["error"] == "invalid_token"
        assert 'error_description="wrong_token_type"' in response.headers["WWW-Authenticate"]
        assert token not in json.dumps({k: v for k, v in body.items() if k != "request_id"})
    assert gw.gateway.verifier.verified_now(token) is None
    assert len(upstream.seen) == seen


async def test_a_jwt_template_is_not_a_session(clerk: DevIssuer, door: Running,
                                               upstream: Upstream) -> None:
    await assert_wrong_type(door, signed(clerk, {"cat": CAT_JWT_TEMPLATE}), upstream)


async def test_an_m2m_jwt_by_its_category_is_not_a_session(
    clerk: DevIssuer, door: Running, upstream: Upstream
) -> None:
    await assert_wrong_type(door, signed(clerk, {"cat": CAT_M2M}), upstream)


@pytest.mark.parametrize("cat", [None, CAT_SESSION, CAT_IGNORE])
async def test_an_m2m_jwt_by_its_machine_subject_is_not_a_session(
    clerk: DevIssuer, door: Running, upstream: Upstream, cat: str | None
) -> None:
    header = {} if cat is None else {"cat": cat}
    token = signed(clerk, header, sub="mch_2xhFjEI5X2qWRvtV13BzSj8H6Dk", sid=None)
    await assert_wrong_type(door, token, upstream)


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "At+Jwt", "application/at+jwt",
                                 "Application/AT+JWT"])
async def test_an_oauth_jwt_access_token_is_not_a_session(
    clerk: DevIssuer, door: Running, upstream: Upstream, typ: str
) -> None:
    await assert_wrong_type(door, signed(clerk, {"typ": typ}), upstream)


@pytest.mark.parametrize("cat", [
    "cl_B7d4PD444AAA", "cl_b7d4pd111aaa", "cl_B7d4PD111AAA ", "", "session", None, 1, ["x"],
    {"c": CAT_SESSION}, [CAT_SESSION],
])
async def test_an_unknown_category_is_not_a_session(
    clerk: DevIssuer, door: Running, upstream: Upstream, cat: Any
) -> None:
    await assert_wrong_type(door, signed(clerk, {"cat": cat}), upstream)


@pytest.mark.parametrize("typ", ["logout+jwt", "dpop+jwt", "secevent+jwt", "", "at+jwt ", None, 7])
async def test_an_explicit_other_type_is_not_a_session(
    clerk: DevIssuer, door: Running, upstream: Upstream, typ: Any
) -> None:
    await assert_wrong_type(door, signed(clerk, {"typ": typ}), upstream)


@pytest.mark.parametrize("header", [
    {}, {"cat": CAT_SESSION}, {"cat": CAT_IGNORE}, {"typ": "JWT"}, {"typ": "jwt"},
    {"typ": "application/jwt", "cat": CAT_SESSION}, {"cat": CAT_IGNORE, "oiat": 1700000000},
])
async def test_a_session_token_still_passes(
    clerk: DevIssuer, door: Running, upstream: Upstream, header: dict[str, Any]
) -> None:
    token = signed(clerk, header, sub="user_classy")
    for _ in range(2):
        response = await door.get("/", token)
        assert response.status == 200, await response.text()
    assert door.gateway.verifier.verified_now(token) is not None


async def test_a_cached_session_does_not_let_the_same_claims_in_as_a_template(
    clerk: DevIssuer, door: Running, upstream: Upstream
) -> None:
    claims = clerk.claims(sub="user_same")
    session = sign_raw(clerk, {"cat": CAT_SESSION}, claims)
    template = sign_raw(clerk, {"cat": CAT_JWT_TEMPLATE}, claims)
    assert (await door.get("/", session)).status == 200
    await assert_wrong_type(door, template, upstream)
    assert (await door.get("/", session)).status == 200


async def test_an_oidc_issuer_may_use_rfc9068_access_tokens(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(issuer_env=False, config={"issuers": [{
        "name": "idp", "issuer": clerk.issuer, "preset": "oidc",
        "jwks_url": f"{clerk.issuer}/.well-known/jwks.json"}]})
    assert (await gw.get("/", signed(clerk, {"typ": "at+jwt"}))).status == 200
    refused = await gw.get("/", signed(clerk, {"cat": CAT_JWT_TEMPLATE}))
    assert (await refused.json())["reason"] == "wrong_token_type"
    refused = await gw.get("/", signed(clerk, {"typ": "at+jwt"}, sub="mch_1"))
    assert (await refused.json())["reason"] == "wrong_token_type"


@pytest.fixture
async def gw(make_gateway: GatewayFactory) -> Running:
    return await make_gateway(config=STEADY)


# -- the classification as a property -------------------------------------------------------

SESSION_CATS = (CAT_SESSION, CAT_IGNORE)
PLAIN_TYPS = ("jwt", "application/jwt")
OAUTH_TYPS = ("at+jwt", "application/at+jwt")
ABSENT = object()


def expected_session(cat: Any, typ: Any, sub: str) -> bool:
    """The rule, stated independently: nothing in the token says it is not a session."""
    cat_ok = cat is ABSENT or cat in SESSION_CATS
    typ_ok = typ is ABSENT or (isinstance(typ, str) and typ.lower() in PLAIN_TYPS)
    return cat_ok and typ_ok and not sub.startswith("mch_")


def interesting_case(text: str) -> st.SearchStrategy[str]:
    """A string and its case variants."""
    return st.sampled_from([text, text.upper(), text.title(), text.swapcase()])


cats = st.one_of(
    st.just(ABSENT), st.sampled_from([CAT_SESSION, CAT_IGNORE, CAT_JWT_TEMPLATE, CAT_M2M]),
    interesting_case(CAT_SESSION), st.text(max_size=20), st.none(), st.integers(),
    st.lists(st.text(max_size=5), max_size=2),
    st.builds(lambda c, pad: c + pad, st.sampled_from(SESSION_CATS),
              st.text(min_size=1, max_size=3)),
)
typs = st.one_of(
    st.just(ABSENT), *(interesting_case(t) for t in (*PLAIN_TYPS, *OAUTH_TYPS)),
    st.text(max_size=20), st.none(), st.booleans(),
)
subs = st.one_of(st.just("user_2abc"), st.just("mch_2abc"), st.text(max_size=12))


def header_of(cat: Any, typ: Any) -> dict[str, Any]:
    header = {}
    if cat is not ABSENT:
        header["cat"] = cat
    if typ is not ABSENT:
        header["typ"] = typ
    return header


@settings(max_examples=400, deadline=None)
@given(cat=cats, typ=typs, sub=subs)
def test_classification_matches_the_rule(cat: Any, typ: Any, sub: str) -> None:
    token_type = jwt_token_type(header_of(cat, typ), {"sub": sub})
    assert (token_type is TokenType.SESSION_TOKEN) == expected_session(cat, typ, sub)
    if cat == CAT_JWT_TEMPLATE and expected_session(ABSENT, typ, sub):
        assert token_type is TokenType.JWT_TEMPLATE


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cat=cats, typ=typs)
async def test_signed_tokens_pass_the_verifier_only_when_they_are_sessions(
    clerk: DevIssuer, gw: Running, cat: Any, typ: Any
) -> None:
    token = signed(clerk, header_of(cat, typ))
    try:
        await gw.gateway.verifier.verify(token)
    except TokenRejected as exc:
        assert not expected_session(cat, typ, "user_2demo")
        assert exc.reason.label == "wrong_token_type"
    else:
        assert expected_session(cat, typ, "user_2demo")
    response = await gw.get("/", token)
    assert (response.status == 200) == expected_session(cat, typ, "user_2demo")
