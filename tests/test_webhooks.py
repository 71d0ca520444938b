"""Clerk webhooks: verified deliveries revoke access at once; anything else changes nothing."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from gateway.devissuer import DevIssuer
from gateway.http.webhooks import WEBHOOK_PATH
from tests.conftest import GatewayFactory, Running
from tests.revocation_support import (
    ADMIN_TOKEN,
    WEBHOOK_SECRET,
    admin_headers,
    delivery,
    metric,
    reason_of,
)

ENV = {"CLERK_WEBHOOK_SIGNING_SECRET": WEBHOOK_SECRET, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}


async def post(gw: Running, body: bytes, headers: dict[str, str], *, admin: bool = False) -> Any:
    """Deliver a webhook to the public (or admin) listener."""
    client = gw.admin if admin else gw.client
    return await client.post(WEBHOOK_PATH, data=body, headers=headers)


async def revocation_count(gw: Running) -> int:
    """How many revocations the admin API lists."""
    response = await gw.admin.get("/admin/revocations", headers=admin_headers())
    assert response.status == 200
    return len((await response.json())["revocations"])


EVENTS = [
    ("session.revoked", {"id": "sess_1", "user_id": "user_1", "status": "revoked"}),
    ("session.ended", {"id": "sess_1", "user_id": "user_1", "status": "ended"}),
    ("session.removed", {"id": "sess_1", "user_id": "user_1", "status": "removed"}),
    ("user.deleted", {"id": "user_1", "object": "user", "deleted": True}),
    ("organizationMembership.deleted", {
        "object": "organization_membership", "organization": {"id": "org_1"},
        "public_user_data": {"user_id": "user_1"}}),
    ("organization.deleted", {"id": "org_1", "object": "organization", "deleted": True}),
]


@pytest.mark.parametrize(("event_type", "data"), EVENTS, ids=[e[0] for e in EVENTS])
async def test_each_access_removing_event_revokes_a_cached_token(
    clerk: DevIssuer, make_gateway: GatewayFactory, event_type: str, data: dict[str, Any]
) -> None:
    gw = await make_gateway(env=ENV)
    token = clerk.token(sub="user_1", sid="sess_1", org_id="org_1", role="admin")
    other = clerk.token(sub="user_2", sid="sess_2", org_id="org_2")
    assert (await gw.get("/", token)).status == 200  # now in the verified-token cache
    hits_before = metric(gw, "token_cache_lookups_total", result="hit")

    body, headers = delivery(event_type, data)
    response = await post(gw, body, headers)
    assert response.status == 200
    assert (await response.json())["status"] == "applied"

    denied = await gw.get("/", token)
    assert denied.status == 401
    assert await reason_of(denied) == "revoked"
    assert 'error="invalid_token"' in denied.headers["WWW-Authenticate"]
    assert metric(gw, "token_cache_lookups_total", result="hit") == hits_before + 1
    assert (await gw.get("/", other)).status == 200  # nobody else is affected
    assert metric(gw, "webhook_events_total", type=event_type, result="applied") == 1


async def test_replay_is_harmless(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    token = clerk.token(sub="user_1", sid="sess_1")
    body, headers = delivery("session.revoked", {"id": "sess_1", "user_id": "user_1"})
    assert (await (await post(gw, body, headers)).json())["status"] == "applied"
    assert (await gw.get("/", token)).status == 401
    # An operator lifts the revocation; a retried delivery of the same message must not
    # bring it back.
    lifted = await gw.admin.delete("/admin/revocations/session/sess_1", headers=admin_headers())
    assert lifted.status == 200
    assert (await gw.get("/", token)).status == 200

    again = await post(gw, body, headers)
    assert again.status == 200
    assert (await again.json())["status"] == "duplicate"
    assert (await gw.get("/", token)).status == 200
    assert await revocation_count(gw) == 0
    assert metric(gw, "webhook_events_total", type="session.revoked", result="duplicate") == 1


async def test_replay_on_the_admin_listener_is_a_duplicate_too(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(env=ENV)
    body, headers = delivery("user.deleted", {"id": "user_9"})
    assert (await (await post(gw, body, headers, admin=True)).json())["status"] == "applied"
    assert (await (await post(gw, body, headers)).json())["status"] == "duplicate"
    assert await revocation_count(gw) == 1


async def _refused(gw: Running, clerk: DevIssuer, body: bytes, headers: dict[str, str],
                   status: int, error: str) -> None:
    token = clerk.token(sub="user_1", sid="sess_1")
    response = await post(gw, body, headers)
    assert response.status == status
    payload = await response.json()
    assert payload["error"] == error
    assert "Traceback" not in await response.text()
    assert (await gw.get("/", token)).status == 200
    assert await revocation_count(gw) == 0
    assert metric(gw, "webhook_events_total", type="other", result="rejected") == 1


async def test_tampered_body_is_refused(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    body, headers = delivery("user.deleted", {"id": "user_2"})
    tampered = body.replace(b"user_2", b"user_1")
    await _refused(gw, clerk, tampered, headers, 401, "bad_signature")


async def test_wrong_secret_is_refused(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    other = "whsec_" + base64.b64encode(b"another-secret-another-secret-32").decode()
    body, headers = delivery("user.deleted", {"id": "user_1"}, secret=other)
    await _refused(gw, clerk, body, headers, 401, "bad_signature")


async def test_stale_timestamp_is_refused(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    body, headers = delivery("user.deleted", {"id": "user_1"}, timestamp=time.time() - 301)
    await _refused(gw, clerk, body, headers, 400, "stale_timestamp")


async def test_future_timestamp_is_refused(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    body, headers = delivery("user.deleted", {"id": "user_1"}, timestamp=time.time() + 310)
    await _refused(gw, clerk, body, headers, 400, "stale_timestamp")


@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
async def test_missing_header_is_refused(
    clerk: DevIssuer, make_gateway: GatewayFactory, missing: str
) -> None:
    gw = await make_gateway(env=ENV)
    body, headers = delivery("user.deleted", {"id": "user_1"})
    del headers[missing]
    await _refused(gw, clerk, body, headers, 400, "missing_headers")


async def test_malformed_signature_header_is_refused_not_a_500(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV)
    body, headers = delivery("user.deleted", {"id": "user_1"})
    headers["svix-signature"] = "v1-no-comma"
    await _refused(gw, clerk, body, headers, 401, "bad_signature")


async def test_oversized_body_is_refused(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV, config={"revocation": {"webhook_max_body_bytes": 2048}})
    body, headers = delivery("user.deleted", {"id": "user_1", "padding": "x" * 4096})
    await _refused(gw, clerk, body, headers, 413, "body_too_large")


async def test_signed_body_that_is_not_an_event_is_refused(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV)
    body, headers = delivery("user.deleted", {"id": "user_1"})
    body = b"[1, 2, 3]"
    ts = int(headers["svix-timestamp"])
    headers["svix-signature"] = Webhook(WEBHOOK_SECRET).sign(
        headers["svix-id"], datetime.fromtimestamp(ts, tz=UTC), body.decode())
    await _refused(gw, clerk, body, headers, 400, "bad_payload")


async def test_event_missing_its_ids_is_refused(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV)
    body, headers = delivery("organizationMembership.deleted", {"organization": {"id": "org_1"}})
    response = await post(gw, body, headers)
    assert response.status == 400
    assert (await response.json())["error"] == "bad_payload"
    assert await revocation_count(gw) == 0
    # Not remembered: a corrected retry is still processed.
    assert metric(gw, "webhook_events_total", type="organizationMembership.deleted",
                  result="rejected") == 1


async def test_other_event_types_are_acknowledged_and_ignored(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV)
    token = clerk.token(sub="user_1", sid="sess_1")
    body, headers = delivery("user.updated", {"id": "user_1"})
    response = await post(gw, body, headers)
    assert response.status == 200
    assert (await response.json())["status"] == "ignored"
    assert (await gw.get("/", token)).status == 200
    assert await revocation_count(gw) == 0
    # The type label stays bounded: unknown types are counted as "other".
    assert metric(gw, "webhook_events_total", type="other", result="ignored") == 1


async def test_without_a_signing_secret_the_endpoint_refuses_everything(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
    token = clerk.token(sub="user_1", sid="sess_1")
    body, headers = delivery("user.deleted", {"id": "user_1"})
    for admin in (False, True):
        response = await post(gw, body, headers, admin=admin)
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
    assert (await gw.get("/", token)).status == 200


async def test_only_post_is_accepted(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    response = await gw.client.get(WEBHOOK_PATH)
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert (await response.json())["error"] == "method_not_allowed"
