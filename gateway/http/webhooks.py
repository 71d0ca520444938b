"""Clerk webhooks (Svix / Standard Webhooks): verified deliveries that revoke access.

Refusals change nothing: no signing secret configured -> 404; body over the cap -> 413;
body not whole within limits.unauthenticated_body_timeout_seconds -> 408; the process's
budget for unauthenticated bodies spent -> 503 (gateway/http/bounded_body.py); missing
``svix-*`` headers -> 400; timestamp more than 5 minutes away -> 400; bad signature -> 401;
a verified body that is not a Clerk event -> 400. Each ``svix-id`` is processed once
(remembered in the revocation store, shared by replicas); a repeat answers 200 "duplicate".
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.auth.revocation import RevocationChecker
from gateway.auth.revocation_store import RevocationEntry
from gateway.config import RevocationSettings, Secret
from gateway.http.bounded_body import BoundedBodies
from gateway.http.errors import admin_error, json_response
from gateway.http.headers import request_id
from gateway.http.webhook_delivery import MAX_ID, event_text, receive_delivery, revoke_once
from gateway.metrics import Metrics
from gateway.numbers import whole_number

__all__ = ["EVENT_TYPES", "WEBHOOK_PATH", "ClerkWebhooks"]

WEBHOOK_PATH = "/_gateway/webhooks/clerk"
TOLERANCE_SECONDS = 300
# Markers outlive the window in which a delivery's timestamp is accepted (both sides).
MARKER_TTL_SECONDS = 2 * TOLERANCE_SECONDS + 60
EVENT_TYPES = (
    "session.revoked", "session.ended", "session.removed", "user.deleted",
    "organizationMembership.deleted", "organization.deleted",
)


class _BadEvent(ValueError):
    """A verified delivery whose data lacks what its type requires."""


class ClerkWebhooks:
    """Handler for POST /_gateway/webhooks/clerk."""

    def __init__(
        self,
        secret: Secret | None,
        checker: RevocationChecker,
        settings: RevocationSettings,
        metrics: Metrics,
        clock: Callable[[], float],
        bodies: BoundedBodies,
    ) -> None:
        self._webhook = Webhook(secret.value) if secret is not None else None
        self._bodies = bodies
        self._checker = checker
        self._max_body = settings.webhook_max_body_bytes
        self._metrics = metrics
        self._clock = clock

    def _count(self, event_type: str, result: str) -> None:
        label = event_type if event_type in EVENT_TYPES else "other"
        self._metrics.webhook_events.labels(label, result).inc()

    def _reject(self, status: int, rid: str, error: str, message: str) -> web.Response:
        self._count("other", "rejected")
        return admin_error(status, rid, error, error, message)

    async def handle(self, request: web.Request) -> web.Response:
        """Verify one delivery, then apply it once."""
        rid = request_id(request.headers)
        webhook = self._webhook
        if webhook is None:
            return admin_error(404, rid, "not_found", "webhooks_disabled",
                               "Webhooks are not enabled (CLERK_WEBHOOK_SIGNING_SECRET).")
        return await receive_delivery(
            request, self._bodies, self._max_body,
            lambda status, code, text: self._reject(status, rid, code, text),
            lambda body: self._verify(webhook, request, rid, body))

    async def _verify(self, webhook: Webhook, request: web.Request, rid: str, body: bytes
                      ) -> web.Response:
        """Check a delivery read whole (bounded by BoundedBodies), then apply it once."""
        headers = request.headers
        msg_id = headers.get("svix-id") or headers.get("webhook-id")
        timestamp = headers.get("svix-timestamp") or headers.get("webhook-timestamp")
        signature = headers.get("svix-signature") or headers.get("webhook-signature")
        if not (msg_id and timestamp and signature):
            return self._reject(400, rid, "missing_headers",
                                "svix-id, svix-timestamp and svix-signature are required.")
        if len(msg_id) > MAX_ID or not msg_id.isprintable() or not msg_id.isascii():
            return self._reject(400, rid, "invalid_headers", "svix-id is malformed.")
        sent_at = whole_number(timestamp, 12)
        if sent_at is None or abs(self._clock() - sent_at) > TOLERANCE_SECONDS:
            return self._reject(400, rid, "stale_timestamp",
                                "svix-timestamp is missing, malformed or outside 5 minutes.")
        try:
            webhook.verify(body, {"webhook-id": msg_id, "webhook-timestamp": timestamp,
                                        "webhook-signature": signature}, json_parse=False)
        except (WebhookVerificationError, ValueError, binascii.Error):
            return self._reject(401, rid, "bad_signature", "The signature does not verify.")
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if not (isinstance(event, dict) and isinstance(event.get("type"), str)
                and isinstance(event.get("data"), dict)):
            return self._reject(400, rid, "bad_payload", "The body is not a Clerk event.")
        return await self._apply(rid, msg_id, event["type"], event["data"])

    def _entries(self, event_type: str, data: dict[str, Any]) -> list[RevocationEntry]:
        make = self._checker.make_entry
        reason = event_type
        if event_type.startswith("session."):
            sid = event_text(data, "id")
            if sid is None:
                raise _BadEvent("data.id (the session id) is required")
            return [make("session", sid, reason=reason, source="webhook")]
        if event_type == "user.deleted":
            uid = event_text(data, "id")
            if uid is None:
                raise _BadEvent("data.id (the user id) is required")
            return [make("user", uid, reason=reason, source="webhook")]
        if event_type == "organization.deleted":
            oid = event_text(data, "id")
            if oid is None:
                raise _BadEvent("data.id (the organization id) is required")
            return [make("organization", oid, reason=reason, source="webhook")]
        oid = event_text(data, "organization", "id")
        uid = event_text(data, "public_user_data", "user_id")
        if oid is None or uid is None or ":" in oid:
            raise _BadEvent("data.organization.id and data.public_user_data.user_id are required")
        return [make("membership", f"{oid}:{uid}", reason=reason, source="webhook")]

    async def _apply(self, rid: str, msg_id: str, event_type: str,
                     data: dict[str, Any]) -> web.Response:
        if event_type not in EVENT_TYPES:
            self._count(event_type, "ignored")
            return json_response(200, rid, {"status": "ignored", "type": event_type[:100]})
        try:
            entries = self._entries(event_type, data)
        except _BadEvent as exc:
            self._count(event_type, "rejected")
            return admin_error(400, rid, "bad_payload", "bad_payload", str(exc))
        return await revoke_once(rid, self._checker, msg_id, MARKER_TTL_SECONDS, event_type,
                                 entries, lambda result: self._count(event_type, result))
