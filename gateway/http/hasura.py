"""Hasura / PromptQL auth-webhook door: the caller's token in, session variables out.

Hasura v2 (`HASURA_GRAPHQL_AUTH_HOOK`) and DDN / PromptQL (`AuthConfig` webhook mode) call
this with the client's headers: as the headers of a GET, or as `{"headers": {...},
"request": ...}` in the JSON body of a POST. The request goes through the one Authorizer as
`POST <hasura.path>` with those headers. Allowed: 200 with a JSON object of string session
variables (`X-Hasura-Role` always) and a `max-age` no longer than the token's remaining life
(capped by `hasura.max_cache_seconds`), as a header and, for Hasura v2 which reads it from
the body, as a `Cache-Control` body key. Denied: 401 (the only refusal Hasura recognises).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.claims import Identity
from gateway.auth.hasura_roles import allowed_roles, default_role
from gateway.config import HasuraSettings
from gateway.config_sections import HASURA_ROLE_VARIABLE
from gateway.http.bounded_body import BodyRefused, BoundedBodies, answer_and_close
from gateway.http.errors import JSON_CONTENT_TYPE, error_response, hasura_refusal
from gateway.http.headers import DECISION, REQUEST_ID, REQUEST_ID_KEY, request_id
from gateway.http.observe import RequestObserver
from gateway.pipeline import Authorizer, Decision, RequestFacts
from gateway.reasons import Reason

__all__ = ["HASURA_PATH", "HasuraWebhook", "choose_role"]

HASURA_PATH = "/_gateway/hasura"
DOOR = "hasura"


class _BadRequest(ValueError):
    """The POST body is not Hasura's `{"headers": {...}}` object."""


def choose_role(identity: Identity, fallback: str, requested: str | None) -> str | None:
    """The role for this request; None when the requested role is not an allowed one."""
    default = default_role(identity, fallback)
    if not requested or requested == default:
        return default
    return requested if requested in allowed_roles(identity, fallback) else None


def _posted_headers(body: bytes) -> CIMultiDictProxy[str]:
    """The client headers Hasura put in a POST body."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _BadRequest("not JSON") from exc
    headers = payload.get("headers") if isinstance(payload, dict) else None
    if not isinstance(headers, dict):
        raise _BadRequest("no headers object")
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if not isinstance(value, str):
            raise _BadRequest("header values must be strings")
        out.add(name, value)
    return CIMultiDictProxy(out)


class HasuraWebhook:
    """Handler for GET and POST /_gateway/hasura."""

    def __init__(self, authorizer: Authorizer, settings: HasuraSettings, realm: str,
                 clock: Callable[[], float], bodies: BoundedBodies) -> None:
        self.authorizer = authorizer
        self._bodies = bodies
        self._settings = settings
        self._realm = realm
        self._clock = clock
        self.observer = RequestObserver(authorizer.metrics, DOOR)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one auth-webhook call, observed for metrics and the access log."""
        started = self.observer.begin()
        response: web.StreamResponse | None = None
        try:
            response = await self._answer(request)
            return response
        finally:
            self.observer.end(
                started, request.get(REQUEST_ID_KEY, ""), request.method,
                response.status if response is not None else 500, request.get(DECISION))

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        rid = request[REQUEST_ID_KEY] = request_id(request.headers)
        settings = self._settings
        if not settings.enabled:
            return error_response(Reason.NOT_FOUND, rid, realm="")
        if request.method == hdrs.METH_GET:
            headers = request.headers
        elif request.method == hdrs.METH_POST:
            try:
                async with self._bodies.read(request, settings.max_body_bytes) as body:
                    headers = _posted_headers(body)
            except BodyRefused as refused:  # not read whole: answer, then close
                return await answer_and_close(
                    request, error_response(refused.reason, rid, realm=""))
            except _BadRequest:
                return error_response(Reason.MALFORMED_REQUEST, rid, realm="")
        else:
            response = error_response(Reason.UNSUPPORTED_METHOD, rid, realm="")
            response.headers[hdrs.ALLOW] = "GET,POST"
            return response
        decision = await self.authorizer.decide(self._facts(request, headers))
        request[DECISION] = decision
        return self._respond(rid, decision, headers.get(HASURA_ROLE_VARIABLE))

    def _facts(self, request: web.Request, headers: CIMultiDictProxy[str]) -> RequestFacts:
        return RequestFacts(door=DOOR, method=hdrs.METH_POST, uri=self._settings.path,
                            host=headers.get(hdrs.HOST), headers=headers,
                            client_ip=request.remote)

    def _count(self, decision: Decision, reason: Reason) -> None:
        self.authorizer.metrics.decision(DOOR, decision.route.name, reason)

    def _respond(self, rid: str, decision: Decision, requested: str | None) -> web.Response:
        settings = self._settings
        identity = decision.identity
        if not decision.allowed or (identity is None and settings.anonymous_role is None):
            reason = decision.reason if not decision.allowed else Reason.MISSING_TOKEN
            self._count(decision, reason)
            return hasura_refusal(reason, rid, self._realm, decision.retry_after)
        if identity is None:
            assert settings.anonymous_role is not None
            if requested and requested != settings.anonymous_role:
                self._count(decision, Reason.ROLE_NOT_ALLOWED)
                return hasura_refusal(Reason.ROLE_NOT_ALLOWED, rid, self._realm)
            self._count(decision, decision.reason)
            return self._allow(rid, {HASURA_ROLE_VARIABLE: settings.anonymous_role}, 0)
        role = choose_role(identity, settings.default_role, requested)
        if role is None:
            self._count(decision, Reason.ROLE_NOT_ALLOWED)
            return hasura_refusal(Reason.ROLE_NOT_ALLOWED, rid, self._realm)
        self._count(decision, decision.reason)
        remaining = int(identity.expires_at - self._clock())
        return self._allow(rid, self._variables(identity, role),
                           max(0, min(remaining, settings.max_cache_seconds)))

    def _variables(self, identity: Identity, role: str) -> dict[str, str]:
        variables = {"X-Hasura-User-Id": identity.user_id, HASURA_ROLE_VARIABLE: role}
        for name, field_name in self._settings.variables.items():
            value = identity.field_text(field_name)
            if value is not None:
                variables[name] = value
        return variables

    def _allow(self, rid: str, variables: Mapping[str, str], max_age: int) -> web.Response:
        cache = f"max-age={max_age}" if max_age > 0 else "no-store"
        body: dict[str, Any] = dict(variables)
        if max_age > 0 and self._settings.cache_control_in_body:
            body["Cache-Control"] = cache
        return web.Response(status=200, text=json.dumps(body), headers={
            hdrs.CONTENT_TYPE: JSON_CONTENT_TYPE, hdrs.CACHE_CONTROL: cache, REQUEST_ID: rid})
