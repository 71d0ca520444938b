"""What every revoking webhook receiver shares: a capped body read, id checks, apply-once.

Clerk (Svix) and WorkOS sign differently and name their events differently; once a delivery
is verified and turned into revocation entries, applying it is the same: claim the delivery
id in the revocation store (so a retried delivery, on any replica, changes nothing), revoke
every entry, and release the claim when the store fails so that the sender's retry succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import hdrs, web

from gateway.auth.revocation import RevocationChecker
from gateway.auth.revocation_store import RevocationEntry, StoreUnavailable
from gateway.http.errors import json_response

__all__ = ["MAX_ID", "Refuse", "event_text", "read_capped", "read_delivery", "revoke_once"]

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


async def read_capped(request: web.Request, max_bytes: int) -> bytes | None:
    """The raw body, or None when it exceeds the cap (reading no further than the cap)."""
    if request.content_length is not None and request.content_length > max_bytes:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > max_bytes:
            return None
    return bytes(body)


async def read_delivery(request: web.Request, max_bytes: int,
                        refuse: Refuse) -> bytes | web.Response:
    """The body of a POST within the cap, or the refusal (405 with Allow, or 413)."""
    if request.method != hdrs.METH_POST:
        response = refuse(405, "method_not_allowed", "Use POST.")
        response.headers[hdrs.ALLOW] = hdrs.METH_POST
        return response
    body = await read_capped(request, max_bytes)
    if body is None:
        return refuse(413, "body_too_large", f"The body exceeds {max_bytes} bytes.")
    return body


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
