"""What every revoking webhook receiver shares: a bounded body read, id checks, apply-once.

Clerk (Svix) and WorkOS sign differently and name their events differently; once a delivery
is verified and turned into revocation entries, applying it is the same: claim the delivery
id in the revocation store (so a retried delivery, on any replica, changes nothing), revoke
every entry, and release the claim when the store fails so that the sender's retry succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from gateway.auth.revocation import RevocationChecker
from gateway.auth.revocation_store import RevocationEntry, StoreUnavailable
from gateway.http.bounded_body import BodyRefused, BoundedBodies, answer_and_close
from gateway.http.errors import error_body, json_response
from gateway.reasons import Reason

__all__ = ["MAX_ID", "Refuse", "event_text", "receive_delivery", "revoke_once"]

log = logging.getLogger("gateway.webhooks")

MAX_ID = 256

Refuse = Callable[[int, str, str], web.Response]
"""Builds (and counts) a refusal from a status, an error code and a message."""


def event_text(data: Any, *path: str) -> str | None:
    """A non-empty printable id at a path inside the event data, else None."""
    for step in path:
        if not isinstance(data, dict):
            return None
        data = data.get(step)
    if isinstance(data, str) and data and len(data) <= MAX_ID and data.isprintable() \
            and data.isascii() and " " not in data and "," not in data:
        return data
    return None


async def receive_delivery(
    request: web.Request,
    bodies: BoundedBodies,
    max_bytes: int,
    refuse: Refuse,
    verify: Callable[[bytes], Awaitable[web.Response]],
) -> web.Response:
    """A POST's body, read within BoundedBodies' bounds, handed to `verify`; otherwise the
    refusal: 405 with Allow, 413, or 408/503 (then the connection closes, the rest unread)."""
    if request.method != hdrs.METH_POST:
        response = refuse(405, "method_not_allowed", "Use POST.")
        response.headers[hdrs.ALLOW] = hdrs.METH_POST
        return response
    try:
        async with bodies.read(request, max_bytes) as body:
            return await verify(body)
    except BodyRefused as refused:  # the body was not read whole: answer, then close
        reason = refused.reason
        if reason is Reason.BODY_TOO_LARGE:
            response = refuse(413, "body_too_large", f"The body exceeds {max_bytes} bytes.")
        else:
            response = refuse(reason.status, reason.label, error_body(reason)["message"])
            if reason.status == 503:
                response.headers[hdrs.RETRY_AFTER] = "1"
        return await answer_and_close(request, response)


async def revoke_once(
    rid: str,
    checker: RevocationChecker,
    marker: str,
    marker_ttl: float,
    event_type: str,
    entries: list[RevocationEntry],
    count: Callable[[str], None],
) -> web.Response:
    """Apply a verified delivery's revocations once: applied, duplicate or 503 (retry)."""
    store = checker.store
    try:
        if not await store.claim(marker, marker_ttl):
            count("duplicate")
            return json_response(200, rid, {"status": "duplicate", "type": event_type})
        try:
            for entry in entries:
                await checker.revoke(entry)
        except StoreUnavailable:
            await store.release(marker)
            raise
    except StoreUnavailable:
        count("rejected")
        log.warning("webhook not applied: revocation store unavailable")
        return json_response(503, rid, {
            "error": "store_unavailable", "reason": "store_unavailable",
            "message": "The revocation store is unreachable; retry later."})
    count("applied")
    log.info("webhook applied", extra={"type": event_type, "delivery_id": marker})
    return json_response(200, rid, {
        "status": "applied", "type": event_type,
        "revoked": [{"kind": e.kind, "id": e.id} for e in entries]})
