"""WorkOS webhooks: signed deliveries that take access away revoke it; nothing else does."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devissuer import DevIssuer
from gateway.http.workos_signature import (
    BadSignatureHeader,
    parse_signature_header,
    signature_matches,
)
from gateway.http.workos_webhooks import WORKOS_WEBHOOK_PATH
from tests.conftest import GatewayFactory, Running
from tests.redis_support import RedisServer, redis_server
from tests.revocation_support import ADMIN_TOKEN, admin_headers, delivery, metric, reason_of
from tests.test_revocation_redis import eventually, ready
from tests.test_workos import workos_config

__all__ = ["redis_server"]  # the fixture, re-exported for pytest

SECRET = "workos-webhook-secret-for-tests"
ENV = {"WORKOS_WEBHOOK_SECRET": SECRET, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}


@pytest.fixture
async def gw(clerk: DevIssuer, make_gateway: GatewayFactory) -> Running:
    return await make_gateway(env=ENV, config=workos_config(clerk), issuer_env=False)


async def post(gw: Running, body: bytes, headers: dict[str, str], *, admin: bool = False) -> Any:
    """Deliver a webhook to the public (or admin) listener."""
    client = gw.admin if admin else gw.client
    return await client.post(WORKOS_WEBHOOK_PATH, data=body, headers=headers)


async def revocations(gw: Running) -> list[dict[str, Any]]:
    """What the admin API lists."""
    response = await gw.admin.get("/admin/revocations", headers=admin_headers())
    assert response.status == 200
    return list((await response.json())["revocations"])


MEMBERSHIP = {"object": "organization_membership", "id": "om_1", "user_id": "user_1",
              "organization_id": "org_1", "status": "inactive"}
EVENTS = [
    ("session.revoked", {"object": "session", "id": "session_1", "user_id": "user_1",
                         "status": "revoked"}),
    ("user.deleted", {"object": "user", "id": "user_1", "email": "a@example.com"}),
    ("organization.deleted", {"object": "organization", "id": "org_1"}),
    ("organization_membership.deleted", {**MEMBERSHIP, "status": "active"}),
    ("organization_membership.updated", MEMBERSHIP),
]


@pytest.mark.parametrize(("event", "data"), EVENTS, ids=[e[0] for e in EVENTS])
async def test_each_access_removing_event_revokes_a_cached_token(
    clerk: DevIssuer, gw: Running, event: str, data: dict[str, Any]
) -> None:
    token = clerk.workos_token(sub="user_1", sid="session_1", org_id="org_1", role="admin")
    other = clerk.workos_token(sub="user_2", sid="session_2", org_id="org_2")
    assert (await gw.get("/", token)).status == 200  # now in the verified-token cache

    body, headers = clerk.workos_delivery(SECRET, event, data)
    response = await post(gw, body, headers)
    assert response.status == 200
    assert (await response.json())["status"] == "applied"

    denied = await gw.get("/", token)
    assert denied.status == 401
    assert await reason_of(denied) == "revoked"
    assert (await gw.get("/", other)).status == 200  # nobody else is affected
    assert metric(gw, "webhook_events_total", type=f"workos:{event}", result="applied") == 1


@pytest.mark.parametrize("event", ["dsync.user.deleted", "dsync.user.updated"])
async def test_directory_user_removal_is_recorded_under_the_directory_user_id(
    clerk: DevIssuer, gw: Running, event: str
) -> None:
    data = {"object": "directory_user", "id": "directory_user_1", "directory_id": "directory_1",
            "organization_id": "org_1", "state": "inactive"}
    body, headers = clerk.workos_delivery(SECRET, event, data)
    assert (await (await post(gw, body, headers)).json())["status"] == "applied"
    listed = await revocations(gw)
    assert [(r["kind"], r["id"]) for r in listed] == [("user", "directory_user_1")]
    assert listed[0]["reason"] == f"workos:{event}"


@pytest.mark.parametrize(("event", "data", "label"), [
    ("organization_membership.updated", {**MEMBERSHIP, "status": "active"},
     "organization_membership.updated"),
    ("dsync.user.updated", {"id": "directory_user_1", "state": "active"}, "dsync.user.updated"),
    ("user.updated", {"id": "user_1"}, "other"),
    ("connection.activated", {"id": "conn_1"}, "other"),
])
async def test_events_that_take_nothing_away_are_acknowledged_and_ignored(
    clerk: DevIssuer, gw: Running, event: str, data: dict[str, Any], label: str
) -> None:
    token = clerk.workos_token(sub="user_1", sid="session_1", org_id="org_1")
    body, headers = clerk.workos_delivery(SECRET, event, data)
    response = await post(gw, body, headers)
    assert response.status == 200
    assert (await response.json())["status"] == "ignored"
    assert (await gw.get("/", token)).status == 200
    assert await revocations(gw) == []
    # The type label stays bounded: types that never revoke are counted as workos:other.
    assert metric(gw, "webhook_events_total", type=f"workos:{label}", result="ignored") == 1


async def test_replay_is_harmless(clerk: DevIssuer, gw: Running) -> None:
    token = clerk.workos_token(sub="user_1", sid="session_1")
    body, headers = clerk.workos_delivery(SECRET, "session.revoked", {"id": "session_1"})
    assert (await (await post(gw, body, headers)).json())["status"] == "applied"
    assert (await gw.get("/", token)).status == 401
    lifted = await gw.admin.delete("/admin/revocations/session/session_1",
                                   headers=admin_headers())
    assert lifted.status == 200
    assert (await gw.get("/", token)).status == 200
    for admin in (False, True):  # the same delivery again, on either listener
        again = await post(gw, body, headers, admin=admin)
        assert again.status == 200
        assert (await again.json())["status"] == "duplicate"
    assert (await gw.get("/", token)).status == 200
    assert await revocations(gw) == []
    assert metric(gw, "webhook_events_total", type="workos:session.revoked",
                  result="duplicate") == 2


async def test_same_id_from_clerk_and_workos_do_not_collide(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    from tests.revocation_support import WEBHOOK_SECRET

    gw = await make_gateway(env={**ENV, "CLERK_WEBHOOK_SIGNING_SECRET": WEBHOOK_SECRET},
                            config=workos_config(clerk), issuer_env=False)
    body, headers = delivery("user.deleted", {"id": "user_9"}, msg_id="evt_same")
    assert (await (await gw.client.post("/_gateway/webhooks/clerk", data=body,
                                        headers=headers)).json())["status"] == "applied"
    body, headers = clerk.workos_delivery(SECRET, "user.deleted", {"id": "user_8"},
                                          event_id="evt_same")
    assert (await (await post(gw, body, headers)).json())["status"] == "applied"
    assert len(await revocations(gw)) == 2


async def _refused(gw: Running, clerk: DevIssuer, body: bytes, headers: dict[str, str],
                   status: int, error: str) -> None:
    token = clerk.workos_token(sub="user_1", sid="session_1")
    response = await post(gw, body, headers)
    assert response.status == status
    payload = await response.json()
    assert payload["error"] == error and payload["reason"] == error and payload["request_id"]
    assert "Traceback" not in await response.text()
    assert (await gw.get("/", token)).status == 200
    assert await revocations(gw) == []
    assert metric(gw, "webhook_events_total", type="workos:other", result="rejected") == 1


async def test_tampered_body_is_refused(clerk: DevIssuer, gw: Running) -> None:
    body, headers = clerk.workos_delivery(SECRET, "user.deleted", {"id": "user_2"})
    await _refused(gw, clerk, body.replace(b"user_2", b"user_1"), headers, 401, "bad_signature")


async def test_wrong_secret_is_refused(clerk: DevIssuer, gw: Running) -> None:
    body, headers = clerk.workos_delivery("another-secret", "user.deleted", {"id": "user_1"})
    await _refused(gw, clerk, body, headers, 401, "bad_signature")


async def test_signature_over_another_timestamp_is_refused(clerk: DevIssuer, gw: Running) -> None:
    body, headers = clerk.workos_delivery(SECRET, "user.deleted", {"id": "user_1"})
    stamp, mac = headers["WorkOS-Signature"].split(", ")
    headers["WorkOS-Signature"] = f"t={int(stamp[2:]) + 1}, {mac}"
    await _refused(gw, clerk, body, headers, 401, "bad_signature")


@pytest.mark.parametrize("offset", [-181, 181])
async def test_timestamp_outside_180_seconds_is_refused(
    clerk: DevIssuer, gw: Running, offset: int
) -> None:
    stamp = int((time.time() + offset) * 1000)
    body, headers = clerk.workos_delivery(SECRET, "user.deleted", {"id": "user_1"},
                                          timestamp_ms=stamp)
    await _refused(gw, clerk, body, headers, 400, "stale_timestamp")


async def test_timestamp_within_180_seconds_is_accepted(clerk: DevIssuer, gw: Running) -> None:
    stamp = int((time.time() - 170) * 1000)
    body, headers = clerk.workos_delivery(SECRET, "user.deleted", {"id": "user_1"},
                                          timestamp_ms=stamp)
    assert (await post(gw, body, headers)).status == 200


async def test_missing_signature_header_is_refused(clerk: DevIssuer, gw: Running) -> None:
    body, headers = clerk.workos_delivery(SECRET, "user.deleted", {"id": "user_1"})
    del headers["WorkOS-Signature"]
    await _refused(gw, clerk, body, headers, 400, "missing_headers")


@pytest.mark.parametrize("header", ["v1-only", "t=123", "t=abc, v1=" + "0" * 64,
                                    "t=1, t=2, v1=" + "0" * 64, "t=1, v1=zz"])
async def test_malformed_signature_header_is_refused_not_a_500(
    clerk: DevIssuer, gw: Running, header: str
) -> None:
    body, headers = clerk.workos_delivery(SECRET, "user.deleted", {"id": "user_1"})
    headers["WorkOS-Signature"] = header
    await _refused(gw, clerk, body, headers, 400, "invalid_headers")


async def test_oversized_body_is_refused(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    config = {**workos_config(clerk), "revocation": {"webhook_max_body_bytes": 2048}}
    gw = await make_gateway(env=ENV, config=config, issuer_env=False)
    body, headers = clerk.workos_delivery(SECRET, "user.deleted",
                                          {"id": "user_1", "padding": "x" * 4096})
    await _refused(gw, clerk, body, headers, 413, "body_too_large")


async def test_signed_body_that_is_not_an_event_is_refused(clerk: DevIssuer, gw: Running) -> None:
    body = b'{"event": "user.deleted", "data": {"id": "user_1"}}'  # no event id
    stamp = str(int(time.time() * 1000))
    mac = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {"WorkOS-Signature": f"t={stamp}, v1={mac}"}
    await _refused(gw, clerk, body, headers, 400, "bad_payload")


async def test_event_missing_its_ids_is_refused_and_not_remembered(
    clerk: DevIssuer, gw: Running
) -> None:
    data = {"organization_id": "org_1"}
    body, headers = clerk.workos_delivery(SECRET, "organization_membership.deleted", data,
                                          event_id="event_fixed")
    response = await post(gw, body, headers)
    assert response.status == 400
    assert (await response.json())["error"] == "bad_payload"
    assert metric(gw, "webhook_events_total", type="workos:organization_membership.deleted",
                  result="rejected") == 1
    fixed, headers = clerk.workos_delivery(SECRET, "organization_membership.deleted",
                                           {**data, "user_id": "user_1"}, event_id="event_fixed")
    assert (await (await post(gw, fixed, headers)).json())["status"] == "applied"


async def test_without_a_secret_both_listeners_answer_404_with_a_reason(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
                            config=workos_config(clerk), issuer_env=False)
    body, headers = clerk.workos_delivery(SECRET, "user.deleted", {"id": "user_1"})
    for admin in (False, True):
        response = await post(gw, body, headers, admin=admin)
        assert response.status == 404
        payload = await response.json()
        assert payload["error"] == "not_found"
        assert payload["reason"] == "webhook_not_configured"
    assert await revocations(gw) == []


async def test_only_post_is_accepted(gw: Running) -> None:
    response = await gw.client.get(WORKOS_WEBHOOK_PATH)
    assert response.status == 405
    assert response.headers["Allow"] == "POST"


def _header(secret: str, stamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp}, v1={mac}"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_signature_header_parser_never_fails_otherwise(value: str) -> None:
    try:
        parsed = parse_signature_header(value)
    except BadSignatureHeader:
        return
    assert parsed.timestamp.isdigit()
    assert all(len(s) == 64 for s in parsed.signatures)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=10**15))
def test_any_body_verifies_only_with_its_own_signature(body: bytes, stamp: int) -> None:
    header = parse_signature_header(_header(SECRET, str(stamp), body))
    assert signature_matches(SECRET.encode(), header, body)
    assert not signature_matches(b"other", header, body)
    assert not signature_matches(SECRET.encode(), header, body + b" ")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["t=1", "v1=" + "a" * 64, "v0=x", " ", "=", ",", "t="]),
                max_size=8).map(", ".join))
def test_parser_handles_recombined_parts(value: str) -> None:
    try:
        parsed = parse_signature_header(value)
    except BadSignatureHeader:
        return
    assert value.count("t=1") == 1 and parsed.timestamp == "1"


async def test_arbitrary_body_bytes_never_cause_a_500(clerk: DevIssuer, gw: Running) -> None:
    for body in (b"\xff\xfe\x00", b"[" * 200_000, json.dumps({"event": 1}).encode(), b""):
        stamp = str(int(time.time() * 1000))
        response = await post(gw, body, {"WorkOS-Signature": _header(SECRET, stamp, body)})
        assert response.status == 400, body[:20]
        assert (await response.json())["error"] == "bad_payload"


@pytest.mark.peers
async def test_two_gateways_on_one_redis_share_revocations_and_replays(
    clerk: DevIssuer, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    env = {**ENV, "GATEWAY_REDIS_URL": redis_server.url}
    cfg = {**workos_config(clerk), "revocation": {"store_retry_seconds": 0.2}}
    first = await make_gateway(env=env, config=cfg, issuer_env=False)
    second = await make_gateway(env=env, config=cfg, issuer_env=False)
    await eventually(lambda: ready(first, True))
    await eventually(lambda: ready(second, True))
    token = clerk.workos_token(sub="user_1", sid="session_1", org_id="org_1")
    assert (await first.get("/", token)).status == 200
    assert (await second.get("/", token)).status == 200

    body, headers = clerk.workos_delivery(SECRET, "organization_membership.deleted",
                                          {"organization_id": "org_1", "user_id": "user_1"})
    assert (await (await post(first, body, headers)).json())["status"] == "applied"

    async def second_denies() -> bool:
        return (await second.get("/", token)).status == 401

    await eventually(second_denies)
    assert (await (await post(second, body, headers)).json())["status"] == "duplicate"


async def test_the_webhook_secret_never_leaves_the_gateway(
    clerk: DevIssuer, gw: Running
) -> None:
    seen = [repr(gw.settings)]
    body, headers = clerk.workos_delivery("wrong", "user.deleted", {"id": "user_1"})
    for client in (gw.client, gw.admin):
        response = await client.post(WORKOS_WEBHOOK_PATH, data=body, headers=headers)
        seen.append(f"{dict(response.headers)} {await response.text()}")
    seen.append(await (await gw.admin.get("/metrics")).text())
    checked = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"], capture_output=True, text=True,
        env={"CLERK_ISSUER": "https://clerk.example.com", "WORKOS_CLIENT_ID": "client_01X",
             "WORKOS_WEBHOOK_SECRET": SECRET, "PATH": ""}, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    seen.append(checked.stdout + checked.stderr)
    assert SECRET not in "\n".join(seen)
