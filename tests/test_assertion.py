"""Signed identity assertions: claims, reuse, keys, publication, both doors, spoofing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth.signing_keys import (
    SigningKeyError,
    jwk_thumbprint,
    load_signing_key,
    published_keys,
)
from gateway.cli import main
from gateway.config import ConfigError, load_settings
from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running
from tests.proxy_support import Upstream

ISSUER = "https://gateway.example.com"
AUDIENCE = "https://api.example.com"
HEADER = "X-Gateway-Assertion"


def _config(**assertion: Any) -> dict[str, Any]:
    return {"assertion": {"enabled": True, "issuer": ISSUER, "audience": AUDIENCE, **assertion}}


async def _jwks(running: Running, *, admin: bool = False) -> jwt.PyJWKSet:
    client = running.admin if admin else running.client
    response = await client.get("/_gateway/jwks.json")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "public, max-age=300"
    return jwt.PyJWKSet.from_dict(await response.json())


def _verify(token: str, keys: jwt.PyJWKSet, audience: str = AUDIENCE,
            leeway: float = 0) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=[key.algorithm_name],
                                        audience=audience, issuer=ISSUER, leeway=leeway)
    return claims


def _pem(key: Any, path: Path) -> str:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


def test_thumbprint_is_rfc7638() -> None:
    """The RFC 7638 section 3.1 example key has the RFC's thumbprint."""
    jwk = {
        "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
             "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-"
             "65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qN"
             "Lyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awap"
             "JzKnqDKgw",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("version", [1, 2])
async def test_forward_auth_assertion_verifies_with_org(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path, version: int
) -> None:
    """An allowed decision carries a JWT that PyJWT verifies against the published keys."""
    running = await make_gateway({"GATEWAY_STATE_DIR": str(tmp_path)}, _config())
    token = clerk.token(version=version, org_id="org_1", org_slug="acme", role="org:admin",
                        permissions=("org:invoices:read",), plan="o:pro",
                        features="o:dashboard", org_permissions_v2="read", fpm="1",
                        act={"sub": "user_admin"})
    response = await running.get("/", token)
    assert response.status == 200
    claims = _verify(response.headers[HEADER], await _jwks(running))
    assert claims["sub"] == "user_2demo"
    assert claims["sid"] == "sess_2demo"
    assert claims["org_id"] == "org_1"
    assert claims["org_slug"] == "acme"
    assert claims["org_role"] == "org:admin"
    assert "org:dashboard:read" in claims["org_permissions"] or version == 1
    assert claims["act"] == {"sub": "user_admin"}
    assert claims["source_issuer"] == clerk.issuer
    source_exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert claims["iat"] <= claims["exp"] <= source_exp
    assert claims["jti"]
    assert _verify(response.headers[HEADER], await _jwks(running, admin=True))["sub"]


async def test_organization_less_token_has_no_org_claims(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path
) -> None:
    """Claims that the identity lacks are absent, not empty."""
    running = await make_gateway({"GATEWAY_STATE_DIR": str(tmp_path)}, _config())
    response = await running.get("/", clerk.token())
    claims = _verify(response.headers[HEADER], await _jwks(running))
    assert not {"org_id", "org_slug", "org_role", "org_permissions", "act"} & set(claims)
    assert claims["sub"] == "user_2demo"


async def test_lifetime_never_beyond_the_source_token(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path
) -> None:
    """A 60 s assertion for a token expiring in 20 s expires with the token."""
    running = await make_gateway({"GATEWAY_STATE_DIR": str(tmp_path)},
                                 _config(lifetime_seconds=600))
    token = clerk.token(lifetime=20)
    claims = _verify((await running.get("/", token)).headers[HEADER], await _jwks(running))
    assert claims["exp"] == jwt.decode(token, options={"verify_signature": False})["exp"]
    short = await make_gateway({"GATEWAY_STATE_DIR": str(tmp_path)}, _config(lifetime_seconds=5))
    claims = _verify((await short.get("/", clerk.token(lifetime=600))).headers[HEADER],
                     await _jwks(short))
    assert claims["exp"] - claims["iat"] <= 5


async def test_assertion_is_reused_until_shortly_before_expiry(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path
) -> None:
    """The same token and audience get the same assertion (both doors), then a fresh one."""
    import time

    offset = [0.0]
    running = await make_gateway({"GATEWAY_STATE_DIR": str(tmp_path)},
                                 _config(lifetime_seconds=20),
                                 clock=lambda: time.time() + offset[0])
    token = clerk.token(lifetime=600)
    first = (await running.get("/", token)).headers[HEADER]
    second = (await running.get("/", token)).headers[HEADER]  # cached: the fast door answers
    assert first == second
    offset[0] = 16.0  # past 20 s minus the refresh margin (5 s)
    third = (await running.get("/", token)).headers[HEADER]
    assert third != first
    keys = await _jwks(running)
    assert _verify(third, keys, leeway=30)["jti"] != _verify(first, keys)["jti"]


async def test_denied_request_carries_no_assertion(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path
) -> None:
    """Refusals and public routes carry no assertion."""
    config = _config()
    config["routes"] = [{"name": "open", "path_prefix": "/open", "access": "public"},
                        {"name": "admins", "path_prefix": "/admin",
                         "require": {"role": "org:admin"}}]
    running = await make_gateway({"GATEWAY_STATE_DIR": str(tmp_path)}, config)
    for path, token in (("/", None), ("/", "not.a.token"), ("/admin", clerk.token()),
                        ("/open", None)):
        response = await running.get(path, token)
        assert HEADER not in response.headers, (path, response.status)


async def test_assertions_off_by_default_and_jwks_not_found(
    make_gateway: GatewayFactory, clerk: DevIssuer
) -> None:
    """Off by default: no header, and the key set answers 404 JSON."""
    running = await make_gateway()
    assert HEADER not in (await running.get("/", clerk.token())).headers
    response = await running.client.get("/_gateway/jwks.json")
    assert response.status == 404
    assert (await response.json())["reason"] == "not_found"
    response = await running.client.post("/_gateway/jwks.json")
    assert response.status == 405


async def test_proxy_sets_assertion_and_strips_client_copies(
    make_gateway: GatewayFactory, clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """Upstreams see exactly the gateway's assertion, audience = the upstream's origin."""
    config: dict[str, Any] = {"assertion": {"enabled": True, "issuer": ISSUER}}
    running = await make_gateway(
        {"GATEWAY_STATE_DIR": str(tmp_path), "GATEWAY_UPSTREAM": upstream.url}, config)
    forged = clerk.sign({"sub": "user_victim"})
    spoof = [("X-Gateway-Assertion", forged), ("x_gateway_assertion", forged),
             ("X-GATEWAY-ASSERTION", forged)]
    response = await running.client.get(
        "/api", headers=[("Authorization", f"Bearer {clerk.token()}"), *spoof])
    assert response.status == 200
    seen = upstream.seen[-1]
    values = seen.normalised(HEADER)
    assert len(values) == 1 and values[0] != forged
    assert _verify(values[0], await _jwks(running), audience=upstream.url)["sub"] == "user_2demo"
    await running.client.get("/api", headers=spoof)  # refused: nothing reaches the upstream
    assert len(upstream.seen) == 1


async def test_route_audience_override(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path
) -> None:
    """A route's own `assertion.audience` wins over the default."""
    config = _config()
    config["routes"] = [{"name": "billing", "path_prefix": "/billing",
                         "assertion": {"audience": "https://billing.example.com"}}]
    running = await make_gateway({"GATEWAY_STATE_DIR": str(tmp_path)}, config)
    keys = await _jwks(running)
    token = clerk.token()
    billing = (await running.get("/billing/x", token)).headers[HEADER]
    assert _verify(billing, keys, audience="https://billing.example.com")
    other = (await running.get("/other", token)).headers[HEADER]
    assert _verify(other, keys)["aud"] == AUDIENCE


async def test_hasura_claims_namespace(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path
) -> None:
    """`claims_namespace` adds the object Hasura's JWT mode reads."""
    namespace = "https://hasura.io/jwt/claims"
    running = await make_gateway({"GATEWAY_STATE_DIR": str(tmp_path)},
                                 _config(claims_namespace=namespace))
    keys = await _jwks(running)
    token = clerk.token(org_id="org_1", role="org:admin")
    hasura = _verify((await running.get("/", token)).headers[HEADER], keys)[namespace]
    assert hasura == {"x-hasura-user-id": "user_2demo", "x-hasura-org-id": "org_1",
                      "x-hasura-default-role": "admin",
                      "x-hasura-allowed-roles": ["admin", "user"]}
    plain = _verify((await running.get("/", clerk.token())).headers[HEADER], keys)[namespace]
    assert plain == {"x-hasura-user-id": "user_2demo", "x-hasura-default-role": "user",
                     "x-hasura-allowed-roles": ["user"]}


@pytest.mark.parametrize(("algorithm", "key"), [
    ("ES256", ec.generate_private_key(ec.SECP256R1())),
    ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
])
async def test_key_file_for_each_algorithm(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path, algorithm: str, key: Any
) -> None:
    """A PEM key file signs; its kid is the RFC 7638 thumbprint of its public key."""
    path = _pem(key, tmp_path / "signing.pem")
    running = await make_gateway(
        {"GATEWAY_STATE_DIR": str(tmp_path / "state"), "GATEWAY_SIGNING_KEY_FILE": path},
        _config(algorithm=algorithm))
    header = (await running.get("/", clerk.token())).headers[HEADER]
    assert jwt.get_unverified_header(header)["alg"] == algorithm
    keys = await _jwks(running)
    assert _verify(header, keys)["sub"] == "user_2demo"
    jwk = json.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(key.public_key()))
    assert jwt.get_unverified_header(header)["kid"] == jwk_thumbprint(jwk)


def test_key_that_does_not_fit_the_algorithm(tmp_path: Path) -> None:
    """An RSA key for ES256, a short RSA key, or garbage: a clear error naming the file."""
    rsa_path = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048),
                    tmp_path / "rsa.pem")
    with pytest.raises(SigningKeyError, match="does not fit ES256"):
        load_signing_key(rsa_path, str(tmp_path), "ES256")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM"):
        load_signing_key(str(garbage), str(tmp_path), "ES256")
    with pytest.raises(SigningKeyError, match="cannot be read"):
        load_signing_key(str(tmp_path / "missing.pem"), str(tmp_path), "ES256")


def test_generated_key_is_kept_and_shared(tmp_path: Path) -> None:
    """The first load generates and keeps the key; every later load (restart) reads it."""
    first = load_signing_key(None, str(tmp_path), "ES256")
    again = load_signing_key(None, str(tmp_path), "ES256")
    assert first.kid == again.kid
    path = tmp_path / "signing" / "es256.pem"
    assert path.stat().st_mode & 0o077 == 0  # readable by the gateway's user only


async def test_restart_signs_with_the_same_key(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path
) -> None:
    """Two gateways on one state directory (a restart, or two workers) share the key."""
    env = {"GATEWAY_STATE_DIR": str(tmp_path)}
    one = await make_gateway(env, _config())
    two = await make_gateway(env, _config())
    token = clerk.token()
    kid_one = jwt.get_unverified_header((await one.get("/", token)).headers[HEADER])["kid"]
    kid_two = jwt.get_unverified_header((await two.get("/", token)).headers[HEADER])["kid"]
    assert kid_one == kid_two


async def test_rotation_keeps_the_previous_key_published(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path
) -> None:
    """After a key file is replaced and reloaded, the old key stays published one lifetime."""
    import time

    offset = [0.0]
    path = tmp_path / "signing.pem"
    _pem(ec.generate_private_key(ec.SECP256R1()), path)
    env = {"GATEWAY_STATE_DIR": str(tmp_path / "state"), "GATEWAY_SIGNING_KEY_FILE": str(path)}
    running = await make_gateway(env, _config(), clock=lambda: time.time() + offset[0])
    token = clerk.token(lifetime=3600)
    old = (await running.get("/", token)).headers[HEADER]
    _pem(ec.generate_private_key(ec.SECP256R1()), path)
    await running.gateway.reload(running.settings)
    new = (await running.get("/", token)).headers[HEADER]
    old_kid = jwt.get_unverified_header(old)["kid"]
    new_kid = jwt.get_unverified_header(new)["kid"]
    assert old_kid != new_kid
    keys = await _jwks(running)
    assert _verify(old, keys) and _verify(new, keys, leeway=300)
    signer = running.gateway.authorizer.assertions
    assert signer is not None
    offset[0] = 60 + 60 + 1  # one lifetime plus the publication margin
    kids = [k["kid"] for k in published_keys(str(tmp_path / "state"), signer.key,
                                             lambda: time.time() + offset[0])]
    assert kids == [new_kid]


@pytest.mark.parametrize(("assertion", "upstream", "problem"), [
    ({"enabled": True, "audience": AUDIENCE}, None, "assertion.issuer: is required"),
    ({"enabled": True, "issuer": ISSUER}, None, "assertion.audience: is required"),
    ({"issuer": ISSUER, "header": "X Bad"}, None, "is not a valid header name"),
    ({"issuer": ISSUER, "header": "X-User-Id"}, None, "already used"),
    ({"issuer": ISSUER, "header": "authorization"}, None, "already used"),
    ({"issuer": ISSUER, "algorithm": "HS256"}, None, "must be one of ES256, EdDSA, RS256"),
    ({"issuer": ISSUER, "lifetime_seconds": 7200}, None, "at most 3600"),
    ({"issuer": ISSUER, "surprise": 1}, None, "assertion.surprise: unknown setting"),
])
def test_invalid_assertion_settings(
    tmp_path: Path, assertion: dict[str, Any], upstream: str | None, problem: str
) -> None:
    """Each invalid setting is named."""
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"assertion": assertion}))
    with pytest.raises(ConfigError) as raised:
        load_settings({"CLERK_ISSUER": "https://clerk.example.com"}, str(path))
    assert any(problem in p for p in raised.value.problems), raised.value.problems


def test_check_config_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config prints the key id of a key file, and refuses an unusable one."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = _pem(key, tmp_path / "signing.pem")
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(_config()))
    monkeypatch.setenv("CLERK_ISSUER", "https://clerk.example.com")
    monkeypatch.setenv("GATEWAY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GATEWAY_SIGNING_KEY_FILE", path)
    assert main(["check-config", "--config", str(config)]) == 0
    kid = jwk_thumbprint(json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(key.public_key())))
    assert f"key id {kid}" in capsys.readouterr().out
    Path(path).write_text("garbage")
    assert main(["check-config", "--config", str(config)]) == 2
    assert "not an unencrypted PEM private key" in capsys.readouterr().err


async def test_machine_credentials_carry_their_type_and_scopes(
    make_gateway: GatewayFactory, clerk: DevIssuer, tmp_path: Path
) -> None:
    """An API key's and an M2M token's assertions name the type, the scopes, the machine."""
    from tests.machine_support import machine_gateway

    running = await machine_gateway(make_gateway, clerk, extra=_config(),
                                     env={"GATEWAY_STATE_DIR": str(tmp_path)})
    keys = await _jwks(running)
    api_key = clerk.api_key("user_k", scopes=("read", "write"))
    claims = _verify((await running.get("/keys", api_key)).headers[HEADER], keys)
    assert (claims["sub"], claims["token_type"]) == ("user_k", "api_key")
    assert claims["scopes"] == ["read", "write"]
    m2m = clerk.m2m_token("mch_job", scopes=("jobs",))
    claims = _verify((await running.get("/m2m", m2m)).headers[HEADER], keys)
    assert (claims["token_type"], claims["machine_id"]) == ("m2m_token", "mch_job")
    assert claims["scopes"] == ["jobs"]
    session = _verify((await running.get("/session", clerk.token())).headers[HEADER], keys)
    assert session["token_type"] == "session_token" and "scopes" not in session
