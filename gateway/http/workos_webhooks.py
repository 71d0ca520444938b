"""WorkOS webhooks: verified deliveries that take access away revoke it at once.

Refusals change nothing: no WORKOS_WEBHOOK_SECRET -> 404; body over the cap -> 413; no
WorkOS-Signature header -> 400; a malformed header -> 400; timestamp more than 180 s away
(either side) -> 400; bad signature -> 401; a verified body that is not a WorkOS event -> 400.
Each event id is processed once (claimed in the revocation store, shared by replicas); a
repeat answers 200 "duplicate".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.auth.revocation import RevocationChecker
from gateway.auth.revocation_store import RevocationEntry
from gateway.config import RevocationSettings, Secret
from gateway.http.bounded_body import BoundedBodies
from gateway.http.errors import json_response
from gateway.http.headers import request_id
from gateway.http.webhook_delivery import event_text, receive_delivery, revoke_once
from gateway.http.workos_signature import (
    TOLERANCE_SECONDS,
    BadSignatureHeader,
    parse_signature_header,
    signature_matches,
)
from gateway.metrics import Metrics

__all__ = ["WORKOS_EVENT_TYPES", "WORKOS_WEBHOOK_PATH", "WorkOSWebhooks"]

WORKOS_WEBHOOK_PATH = "/_gateway/webhooks/workos"
SIGNATURE_HEADER = "WorkOS-Signature"
MARKER_TTL_SECONDS = 2 * TOLERANCE_SECONDS + 60
# Event types that can take access away (the `type` metric label's closed set, prefixed
# `workos:`). The two `.updated` types revoke only when the new state is not active.
WORKOS_EVENT_TYPES = (
    "session.revoked", "user.deleted", "organization.deleted",
    "organization_membership.deleted", "organization_membership.updated",
    "dsync.user.deleted", "dsync.user.updated",
)
_INACTIVE_DIRECTORY_USER = ("inactive", "suspended")


class _BadEvent(ValueError):
    """A verified delivery whose data lacks what its type requires."""


def _required(data: dict[str, Any], what: str, *path: str) -> str:
    value = event_text(data, *path)
    if value is None or ":" in value:
        raise _BadEvent(f"data.{'.'.join(path)} ({what}) is required")
    return value


def revocation_targets(event_type: str, data: dict[str, Any]) -> list[tuple[str, str]]:
    """The (kind, id) pairs an event revokes; empty when it takes nothing away."""
    if event_type == "session.revoked":
        return [("session", _required(data, "the session id", "id"))]
    if event_type == "user.deleted":
        return [("user", _required(data, "the user id", "id"))]
    if event_type == "organization.deleted":
        return [("organization", _required(data, "the organization id", "id"))]
    if event_type.startswith("organization_membership."):
        if event_type.endswith(".updated") and data.get("status") != "inactive":
            return []
        org = _required(data, "the organization id", "organization_id")
        user = _required(data, "the user id", "user_id")
        return [("membership", f"{org}:{user}")]
    if event_type.startswith("dsync.user."):
        if event_type.endswith(".updated") and data.get("state") not in _INACTIVE_DIRECTORY_USER:
            return []
        return [("user", _required(data, "the directory user id", "id"))]
    return []


class WorkOSWebhooks:
    """Handler for POST /_gateway/webhooks/workos."""

    def __init__(
        self,
        secret: Secret | None,
        checker: RevocationChecker,
        settings: RevocationSettings,
        metrics: Metrics,
        clock: Callable[[], float],
        bodies: BoundedBodies,
    ) -> None:
        self._secret = secret.value.encode() if secret is not None else None
        self._bodies = bodies
        self._checker = checker
        self._max_body = settings.webhook_max_body_bytes
        self._metrics = metrics
        self._clock = clock

    def _count(self, event_type: str, result: str) -> None:
        label = event_type if event_type in WORKOS_EVENT_TYPES else "other"
        self._metrics.webhook_events.labels(f"workos:{label}", result).inc()

    def _refuse(self, status: int, rid: str, error: str, message: str,
                event_type: str = "other") -> web.Response:
        self._count(event_type, "rejected")
        return json_response(status, rid, {"error": error, "reason": error, "message": message})

    async def handle(self, request: web.Request) -> web.Response:
        """Verify one delivery, then apply it once."""
        rid = request_id(request.headers)
        secret = self._secret
        if secret is None:
            return json_response(404, rid, {
                "error": "not_found", "reason": "webhook_not_configured",
                "message": "WorkOS webhooks are not enabled (WORKOS_WEBHOOK_SECRET)."})
        return await receive_delivery(
            request, self._bodies, self._max_body,
            lambda status, code, text: self._refuse(status, rid, code, text),
            lambda body: self._verify(secret, request, rid, body))

    async def _verify(self, secret: bytes, request: web.Request, rid: str, body: bytes
                      ) -> web.Response:
        """Check a delivery read whole (bounded by BoundedBodies), then apply it once."""
        raw_header = request.headers.get(SIGNATURE_HEADER)
        if not raw_header:
            return self._refuse(400, rid, "missing_headers", "WorkOS-Signature is required.")
        try:
            header = parse_signature_header(raw_header)
        except BadSignatureHeader as exc:
            return self._refuse(400, rid, "invalid_headers", f"WorkOS-Signature: {exc}.")
        if abs(self._clock() - header.seconds) > TOLERANCE_SECONDS:
            return self._refuse(400, rid, "stale_timestamp",
                                f"The timestamp is more than {TOLERANCE_SECONDS} s away.")
        if not signature_matches(secret, header, body):
            return self._refuse(401, rid, "bad_signature", "The signature does not verify.")
        try:
            event = json.loads(body)
        except (ValueError, RecursionError):
            event = None
        if not (isinstance(event, dict) and isinstance(event.get("event"), str)
                and isinstance(event.get("data"), dict)
                and event_text(event, "id") is not None):
            return self._refuse(400, rid, "bad_payload", "The body is not a WorkOS event.")
        return await self._apply(rid, event["id"], event["event"], event["data"])

    def _entries(self, event_type: str, data: dict[str, Any]) -> list[RevocationEntry]:
        make = self._checker.make_entry
        return [make(kind, ident, reason=f"workos:{event_type}", source="webhook")
                for kind, ident in revocation_targets(event_type, data)]

    async def _apply(self, rid: str, event_id: str, event_type: str,
                     data: dict[str, Any]) -> web.Response:
        shown = event_type[:100]
        try:
            entries = self._entries(event_type, data)
        except _BadEvent as exc:
            return self._refuse(400, rid, "bad_payload", str(exc), event_type)
        if not entries:
            self._count(event_type, "ignored")
            return json_response(200, rid, {"status": "ignored", "type": shown})
        return await revoke_once(
            rid, self._checker, f"workos:{event_id}", MARKER_TTL_SECONDS, event_type, entries,
            lambda result: self._count(event_type, result))
