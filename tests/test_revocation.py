"""The revocation check: local cache, memory mirror of the shared store, listeners, config."""

from __future__ import annotations

import time

import jwt
import pytest

from gateway.auth.revocation import SocketCloser
from gateway.auth.revocation_store import RevocationEntry
from gateway.config import ConfigError, load_settings
from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory
from tests.revocation_support import ADMIN_TOKEN, admin_headers, metric, reason_of

ENV = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}


async def test_steady_state_is_answered_locally(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env={**ENV, "GATEWAY_SHARED_STATE": "false"},
                            config={"revocation": {"local_ttl_seconds": 60}})
    token = clerk.token(sub="user_1", sid="sess_1", org_id="org_1")
    for _ in range(10):
        assert (await gw.get("/", token)).status == 200
    assert metric(gw, "revocation_checks_total", source="store", result="clear") == 1
    assert metric(gw, "revocation_checks_total", source="local", result="clear") == 9


async def test_shared_store_answers_every_request_from_its_memory_mirror(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV)
    token = clerk.token(sub="user_1", sid="sess_1", org_id="org_1")
    for _ in range(10):
        assert (await gw.get("/", token)).status == 200
    assert metric(gw, "revocation_checks_total", source="store", result="clear") == 0
    assert metric(gw, "revocation_checks_total", source="local", result="clear") == 10


async def test_revocation_applies_even_to_a_locally_cached_clear_answer(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV, config={"revocation": {"local_ttl_seconds": 60}})
    token = clerk.token(sub="user_1", sid="sess_1")
    assert (await gw.get("/", token)).status == 200
    added = await gw.admin.post("/admin/revocations", json={"kind": "session", "id": "sess_1"},
                                headers=admin_headers())
    assert added.status == 201
    response = await gw.get("/", token)
    assert response.status == 401
    assert await reason_of(response) == "revoked"
    assert metric(gw, "revocation_checks_total", source="local", result="revoked") == 1


async def test_token_id_revocation_only_hits_that_token(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV)
    first, second = clerk.token(sub="user_1"), clerk.token(sub="user_1")
    jti = jwt.decode(first, options={"verify_signature": False})["jti"]
    await gw.admin.post("/admin/revocations", json={"kind": "token", "id": jti},
                        headers=admin_headers())
    assert (await gw.get("/", first)).status == 401
    assert (await gw.get("/", second)).status == 200


async def test_membership_revocation_leaves_other_organizations_alone(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV)
    await gw.admin.post("/admin/revocations",
                        json={"kind": "membership", "org_id": "org_1", "user_id": "user_1"},
                        headers=admin_headers())
    assert (await gw.get("/", clerk.token(sub="user_1", org_id="org_1"))).status == 401
    assert (await gw.get("/", clerk.token(sub="user_1", org_id="org_2"))).status == 200
    assert (await gw.get("/", clerk.token(sub="user_1"))).status == 200
    assert (await gw.get("/", clerk.token(sub="user_2", org_id="org_1"))).status == 200


async def test_expired_entries_stop_revoking(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    offset = [0.0]
    gw = await make_gateway(env=ENV, clock=lambda: time.time() + offset[0])
    horizon = gw.settings.revocation.horizon_seconds
    entry = gw.gateway.revocation.make_entry("user", "user_1", ttl=120)
    await gw.gateway.revocation.revoke(entry)
    assert (await gw.get("/", clerk.token(sub="user_1"))).status == 401
    offset[0] = horizon + 1  # a token issued after the entry expired is let through
    later = int(time.time() + offset[0])
    fresh = clerk.token(sub="user_1", iat=later, nbf=later - 5, exp=later + 60)
    assert (await gw.get("/", fresh)).status == 200


@pytest.mark.parametrize("ttl", [None, 120])
async def test_a_revocation_outlives_every_token_it_applies_to(
    clerk: DevIssuer, make_gateway: GatewayFactory, ttl: float | None
) -> None:
    """A 2-hour token, revoked, is still refused after entry_ttl (and after any ttl given)."""
    offset = [0.0]
    start = time.time()  # the gateway's clock stands still but for the offsets (no flake)
    gw = await make_gateway(env=ENV, clock=lambda: start + offset[0])
    issued = int(start)
    token = clerk.token(sub="user_1", sid="sess_1", iat=issued, nbf=issued - 5,
                        exp=issued + 2 * 3600)
    assert (await gw.get("/", token)).status == 200
    entry = gw.gateway.revocation.make_entry("session", "sess_1", ttl=ttl)
    await gw.gateway.revocation.revoke(entry)
    entry_ttl = gw.settings.revocation.entry_ttl_seconds
    for moment in (1, 121, entry_ttl + 1, 2 * 3600 - 1, 2 * 3600 + 4):
        offset[0] = moment
        response = await gw.get("/", token)
        assert response.status == 401, moment
        assert await reason_of(response) == "revoked", moment
    offset[0] = 2 * 3600 + 6  # past exp + leeway: the token itself is refused now
    assert await reason_of(await gw.get("/", token)) == "expired"


async def test_a_token_living_longer_than_the_default_maximum_is_refused(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    """An issuer that declares no maximum gets 24 hours: the revocation horizon follows it."""
    gw = await make_gateway(env=ENV)
    assert (await gw.get("/", clerk.token(lifetime=86400))).status == 200
    response = await gw.get("/", clerk.token(lifetime=86400 + 1))
    assert await reason_of(response) == "lifetime_too_long"
    no_start = clerk.token(iat=None, nbf=None)
    assert await reason_of(await gw.get("/", no_start)) == "lifetime_too_long"


class Recorder:
    """A socket registry that records what it is asked to close."""

    def __init__(self) -> None:
        self.closed: list[tuple[str, str]] = []

    def close_session(self, session_id: str) -> int:
        self.closed.append(("session", session_id))
        return 1

    def close_user(self, user_id: str) -> int:
        self.closed.append(("user", user_id))
        return 1


async def test_listeners_hear_each_revocation_once(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV)
    registry = Recorder()
    heard: list[RevocationEntry] = []

    class Listener:
        def on_revoked(self, entry: RevocationEntry) -> None:
            heard.append(entry)

    unsubscribe = gw.gateway.revocation.subscribe(Listener())
    gw.gateway.revocation.subscribe(SocketCloser(registry))
    for body in ({"kind": "session", "id": "sess_1"}, {"kind": "user", "id": "user_1"},
                 {"kind": "organization", "id": "org_1"}):
        assert (await gw.admin.post("/admin/revocations", json=body,
                                    headers=admin_headers())).status == 201
    assert [(e.kind, e.id) for e in heard] == [
        ("session", "sess_1"), ("user", "user_1"), ("organization", "org_1")]
    assert registry.closed == [("session", "sess_1"), ("user", "user_1")]
    unsubscribe()
    await gw.admin.post("/admin/revocations", json={"kind": "session", "id": "sess_2"},
                        headers=admin_headers())
    assert len(heard) == 3
    assert registry.closed[-1] == ("session", "sess_2")


def test_configuration_defaults_and_errors() -> None:
    env = {"CLERK_ISSUER": "https://clerk.example.com"}
    settings = load_settings(env).revocation
    assert settings.on_store_error == "fail_closed"
    assert settings.introspection_failure_mode == "fail_closed"
    assert settings.entry_ttl_seconds == 3600
    assert settings.local_ttl_seconds == 1.0
    with pytest.raises(ConfigError) as caught:
        load_settings({**env, "GATEWAY_REDIS_URL": "http://redis:6379"})
    assert "GATEWAY_REDIS_URL: must be a redis:// or rediss:// URL" in str(caught.value)
    with pytest.raises(ConfigError) as caught:  # '²' is isdigit() but no port; x no database
        load_settings({**env, "GATEWAY_REDIS_URL": "redis://:s3cret-pw@redis:\u00b2/x"})
    text = str(caught.value)
    assert "GATEWAY_REDIS_URL: the port must be a number" in text
    assert "GATEWAY_REDIS_URL: the database after / must be a number" in text
    assert "s3cret-pw" not in text


def test_configuration_reports_every_problem(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "gateway.yaml"
    path.write_text("revocation:\n  on_store_error: maybe\n  local_ttl_seconds: 0\n"
                    "  entry_ttl_seconds: 10\n  introspection_failure_mode: x\n  bogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"CLERK_ISSUER": "https://clerk.example.com"}, str(path))
    text = str(caught.value)
    for key in ("on_store_error", "local_ttl_seconds", "entry_ttl_seconds",
                "introspection_failure_mode", "bogus"):
        assert f"revocation.{key}" in text


def test_entry_ttl_follows_the_longest_token_lifetime(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "gateway.yaml"
    path.write_text("issuers:\n  - name: corp\n    issuer: https://idp.example.com\n"
                    "    preset: oidc\n    max_token_lifetime_seconds: 86400\n")
    settings = load_settings({}, str(path))
    assert settings.revocation.entry_ttl_seconds == 86400 + 5
    path.write_text(path.read_text() + "revocation:\n  entry_ttl_seconds: 7200\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, str(path))
    assert "revocation.entry_ttl_seconds: must be at least" in str(caught.value)


def test_the_horizon_follows_the_longest_accepted_token_lifetime(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "gateway.yaml"
    issuers = ("issuers:\n  - name: a\n    issuer: https://a.example.com\n"
               "    max_token_lifetime_seconds: 7200\n"
               "  - name: b\n    issuer: https://b.example.com\n"
               "    max_token_lifetime_seconds: 600\n")
    path.write_text(issuers)
    settings = load_settings({}, str(path))
    assert settings.revocation.horizon_seconds == 7200 + 2 * settings.leeway_seconds
    path.write_text(issuers.replace("600", "0").replace("7200", str(91 * 86400)))
    with pytest.raises(ConfigError) as caught:
        load_settings({}, str(path))
    text = str(caught.value)  # one message naming both problems
    assert "issuers[0].max_token_lifetime_seconds" in text
    assert "issuers[1].max_token_lifetime_seconds: 0 (no maximum) is not accepted" in text
