"""Admin API on the admin listener: add, list and remove revocations.

Every request needs ``Authorization: Bearer <GATEWAY_ADMIN_TOKEN>`` (constant-time compare);
with no token configured the API refuses everything (403). Routes:

- ``POST /admin/revocations`` {kind, id | org_id+user_id, ttl_seconds?, reason?} -> 201
- ``GET /admin/revocations[?kind=...]`` -> 200 {"revocations": [...]}
- ``DELETE /admin/revocations/{kind}/{id}`` -> 200, or 404 when absent; a membership's id is
  ``org_id:user_id`` (organization ids never hold a colon).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import hdrs, web

from gateway.auth.revocation import RevocationChecker
from gateway.auth.revocation_store import KINDS, StoreUnavailable
from gateway.config import Secret
from gateway.http.errors import admin_error, json_response
from gateway.http.headers import request_id

__all__ = ["AdminApi", "valid_id"]

_MAX_BODY = 64 * 1024
_MAX_TTL = 90 * 86400.0
_MAX_ID = 256
_FIELDS = {"kind", "id", "org_id", "user_id", "ttl_seconds", "reason"}


def valid_id(value: Any) -> bool:
    """An id the gateway can match: printable ASCII, no spaces or commas, at most 256."""
    return (isinstance(value, str) and 0 < len(value) <= _MAX_ID and value.isascii()
            and value.isprintable() and " " not in value and "," not in value)


def _unavailable(rid: str) -> web.Response:
    return admin_error(503, rid, "store_unavailable", "store_unavailable",
                       "The revocation store is unreachable; retry later.",
                       {hdrs.RETRY_AFTER: "1"})


def _invalid(rid: str, problems: list[str]) -> web.Response:
    return admin_error(400, rid, "invalid_request", "invalid_body",
                       "The request is invalid: " + "; ".join(problems) + ".",
                       problems=problems)


def _too_large(rid: str) -> web.Response:
    return admin_error(413, rid, "body_too_large", "body_too_large",
                       f"The body exceeds {_MAX_BODY} bytes.")


def _id_problems(body: dict[str, Any], *, membership: bool, known: bool) -> list[str]:
    """Every problem of the id fields; with an unknown kind, of each id field given."""
    problems = []
    org, user = body.get("org_id"), body.get("user_id")
    given = [name for name in ("id", "org_id", "user_id") if name in body]
    if membership and "id" in body:
        problems.append("id: not used for a membership (give org_id and user_id)")
    if (membership or (not known and "org_id" in given)) and (
            not valid_id(org) or ":" in str(org)):
        problems.append("org_id: must be an id (printable, no spaces, commas or colons)")
    if (membership or (not known and "user_id" in given)) and not valid_id(user):
        problems.append("user_id: must be an id (printable, no spaces or commas)")
    if known and not membership:
        problems += [f"{name}: only used for a membership" for name in ("org_id", "user_id")
                     if name in body]
    if (not membership and (known or "id" in given or not given)
            and not valid_id(body.get("id"))):
        problems.append("id: must be an id (printable, no spaces or commas)")
    return problems


class AdminApi:
    """Bearer-token protected revocation management."""

    def __init__(self, token: Secret | None, checker: RevocationChecker) -> None:
        self._token = token.value.encode() if token is not None else None
        self._checker = checker

    def register(self, app: web.Application) -> None:
        """Add the routes."""
        app.router.add_post("/admin/revocations", self.add)
        app.router.add_get("/admin/revocations", self.list)
        app.router.add_delete("/admin/revocations/{kind}/{id}", self.remove)

    def _refuse(self, request: web.Request, rid: str) -> web.Response | None:
        if self._token is None:
            return admin_error(403, rid, "forbidden", "admin_api_disabled",
                               "admin API disabled")
        scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        # surrogatepass: a header's undecodable bytes are compared, never a UnicodeError.
        offered = given.strip().encode("utf-8", "surrogatepass")
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered, self._token):
            return admin_error(401, rid, "unauthorized", "admin_token_required",
                               "A valid admin bearer token is required.",
                               {hdrs.WWW_AUTHENTICATE: 'Bearer realm="clerk-gateway-admin"'})
        return None

    async def add(self, request: web.Request) -> web.Response:
        """Add one revocation."""
        rid = request_id(request.headers)
        refused = self._refuse(request, rid)
        if refused is not None:
            return refused
        if request.content_length is not None and request.content_length > _MAX_BODY:
            return _too_large(rid)
        raw = await request.content.read(_MAX_BODY + 1)
        if len(raw) > _MAX_BODY:
            return _too_large(rid)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _invalid(rid, ["the body must be a JSON object"])
        problems, kind, ident = self._validate(body)
        if problems:
            return _invalid(rid, problems)
        entry = self._checker.make_entry(kind, ident, ttl=body.get("ttl_seconds"),
                                         reason=body.get("reason") or "", source="admin")
        try:
            await self._checker.revoke(entry)
        except StoreUnavailable:
            return _unavailable(rid)
        return json_response(201, rid, {"revocation": entry.to_dict()})

    @staticmethod
    def _validate(body: dict[str, Any]) -> tuple[list[str], str, str]:
        problems = [f"{name}: unknown field" for name in sorted(set(body) - _FIELDS)]
        kind = body.get("kind")
        ident = ""
        if not isinstance(kind, str) or kind not in KINDS:
            problems.append(f"kind: must be one of {', '.join(KINDS)}")
            problems += _id_problems(body, membership=False, known=False)
        elif kind == "membership":
            problems += _id_problems(body, membership=True, known=True)
            ident = f"{body.get('org_id')}:{body.get('user_id')}"
        else:
            problems += _id_problems(body, membership=False, known=True)
            ident = str(body.get("id"))
        ttl = body.get("ttl_seconds")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                                or not 1 <= ttl <= _MAX_TTL):
            problems.append(f"ttl_seconds: must be a number from 1 to {_MAX_TTL:g}")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 256
                                   or not reason.isprintable()):
            problems.append("reason: must be printable text of at most 256 characters")
        return problems, str(kind), ident

    async def list(self, request: web.Request) -> web.Response:
        """List live revocations (optionally one kind)."""
        rid = request_id(request.headers)
        refused = self._refuse(request, rid)
        if refused is not None:
            return refused
        kind = request.query.get("kind")
        if kind is not None and kind not in KINDS:
            return _invalid(rid, [f"kind: must be one of {', '.join(KINDS)}"])
        try:
            entries = await self._checker.list()
        except StoreUnavailable:
            return _unavailable(rid)
        return json_response(200, rid, {"revocations": [
            e.to_dict() for e in entries if kind is None or e.kind == kind]})

    async def remove(self, request: web.Request) -> web.Response:
        """Remove one revocation."""
        rid = request_id(request.headers)
        refused = self._refuse(request, rid)
        if refused is not None:
            return refused
        kind, ident = request.match_info["kind"], request.match_info["id"]
        problems = []
        if kind not in KINDS:
            problems.append(f"kind: must be one of {', '.join(KINDS)}")
        if not valid_id(ident):
            problems.append("id: must be an id (printable, no spaces or commas)")
        elif kind == "membership" and ":" not in ident:
            problems.append("id: a membership is given as org_id:user_id")
        if problems:
            return _invalid(rid, problems)
        try:
            removed = await self._checker.unrevoke(kind, ident)
        except StoreUnavailable:
            return _unavailable(rid)
        if not removed:
            return admin_error(404, rid, "not_found", "not_found", "No such revocation.")
        return json_response(200, rid, {"removed": {"kind": kind, "id": ident}})
