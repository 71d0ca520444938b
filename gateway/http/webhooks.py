"""Clerk webhooks (Svix / Standard Webhooks): verified deliveries that revoke access.

Refusals change nothing: no signing secret configured -> 404; body over the cap -> 413;
missing ``svix-*`` headers -> 400; timestamp more than 5 minutes away -> 400; bad signature
-> 401; a verified body that is not a Clerk event -> 400. Each ``svix-id`` is processed once
(remembered in the revocation store, shared by replicas); a repeat answers 200 "duplicate".
"""

from __future__ import annotations

import binascii
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import hdrs, web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.auth.revocation import RevocationChecker
from gateway.auth.revocation_store import RevocationEntry, StoreUnavailable
from gateway.config import RevocationSettings, Secret
from gateway.http.errors import admin_error, json_response
from gateway.http.headers import request_id
from gateway.metrics import Metrics
from gateway.numbers import whole_number

__all__ = ["EVENT_TYPES", "WEBHOOK_PATH", "ClerkWebhooks"]

log = logging.getLogger("gateway.webhooks")

WEBHOOK_PATH = "/_gateway/webhooks/clerk"
TOLERANCE_SECONDS = 300
# Markers outlive the window in which a delivery's timestamp is accepted (both sides).
MARKER_TTL_SECONDS = 2 * TOLERANCE_SECONDS + 60
EVENT_TYPES = (
    "session.revoked", "session.ended", "session.removed", "user.deleted",
    "organizationMembership.deleted", "organization.deleted",
)
_MAX_ID = 256


def _text(data: Any, *path: str) -> str | None:
    """A non-empty printable string at a path inside the event data, else None."""
    for step in path:
        if not isinstance(data, dict):
            return None
        data = data.get(step)
    if isinstance(data, str) and data and len(data) <= _MAX_ID and data.isprintable() \
            and data.isascii() and " " not in data and "," not in data:
        return data
    return None


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
    ) -> None:
        self._webhook = Webhook(secret.value) if secret is not None else None
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

    async def _read(self, request: web.Request) -> bytes | None:
        """The raw body, or None when it exceeds the cap (read no further than the cap)."""
        if request.content_length is not None and request.content_length > self._max_body:
            return None
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > self._max_body:
                return None
        return bytes(body)

    async def handle(self, request: web.Request) -> web.Response:
        """Verify one delivery, then apply it once."""
        rid = request_id(request.headers)
        if self._webhook is None:
            return admin_error(404, rid, "not_found", "webhooks_disabled",
                               "Webhooks are not enabled (CLERK_WEBHOOK_SIGNING_SECRET).")
        if request.method != hdrs.METH_POST:
            response = self._reject(405, rid, "method_not_allowed", "Use POST.")
            response.headers[hdrs.ALLOW] = hdrs.METH_POST
            return response
        body = await self._read(request)
        if body is None:
            return self._reject(413, rid, "body_too_large",
                                f"The body exceeds {self._max_body} bytes.")
        headers = request.headers
        msg_id = headers.get("svix-id") or headers.get("webhook-id")
        timestamp = headers.get("svix-timestamp") or headers.get("webhook-timestamp")
        signature = headers.get("svix-signature") or headers.get("webhook-signature")
        if not (msg_id and timestamp and signature):
            return self._reject(400, rid, "missing_headers",
                                "svix-id, svix-timestamp and svix-signature are required.")
        if len(msg_id) > _MAX_ID or not msg_id.isprintable() or not msg_id.isascii():
            return self._reject(400, rid, "invalid_headers", "svix-id is malformed.")
        sent_at = whole_number(timestamp, 12)
        if sent_at is None or abs(self._clock() - sent_at) > TOLERANCE_SECONDS:
            return self._reject(400, rid, "stale_timestamp",
                                "svix-timestamp is missing, malformed or outside 5 minutes.")
        try:
            self._webhook.verify(body, {"webhook-id": msg_id, "webhook-timestamp": timestamp,
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
            sid = _text(data, "id")
            if sid is None:
                raise _BadEvent("data.id (the session id) is required")
            return [make("session", sid, reason=reason, source="webhook")]
        if event_type == "user.deleted":
            uid = _text(data, "id")
            if uid is None:
                raise _BadEvent("data.id (the user id) is required")
            return [make("user", uid, reason=reason, source="webhook")]
        if event_type == "organization.deleted":
            oid = _text(data, "id")
            if oid is None:
                raise _BadEvent("data.id (the organization id) is required")
            return [make("organization", oid, reason=reason, source="webhook")]
        oid = _text(data, "organization", "id")
        uid = _text(data, "public_user_data", "user_id")
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
        store = self._checker.store
        try:
            if not await store.claim(msg_id, MARKER_TTL_SECONDS):
                self._count(event_type, "duplicate")
                return json_response(200, rid, {"status": "duplicate", "type": event_type})
            try:
                for entry in entries:
                    await self._checker.revoke(entry)
            except StoreUnavailable:
                await store.release(msg_id)
                raise
        except StoreUnavailable:
            self._count(event_type, "rejected")
            log.warning("webhook not applied: revocation store unavailable")
            return admin_error(503, rid, "store_unavailable", "store_unavailable",
                               "The revocation store is unreachable; retry later.")
        self._count(event_type, "applied")
        log.info("webhook applied", extra={"type": event_type, "svix_id": msg_id})
        return json_response(200, rid, {
            "status": "applied", "type": event_type,
            "revoked": [{"kind": e.kind, "id": e.id} for e in entries]})
