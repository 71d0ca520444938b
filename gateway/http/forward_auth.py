"""Forward-auth door: Traefik, nginx auth_request, Caddy forward_auth and Envoy ext_authz."""

from __future__ import annotations

from aiohttp import hdrs, web

from gateway.config import ForwardAuthSettings
from gateway.http.errors import error_response
from gateway.http.headers import DECISION, REQUEST_ID, request_id
from gateway.pipeline import Authorizer, RequestFacts

__all__ = ["ForwardAuthHandler"]

_EMPTY: dict[str, str] = {}


class ForwardAuthHandler:
    """Answers 200 with identity headers, or 401/403/400/503 with a JSON body; never a 3xx."""

    def __init__(self, authorizer: Authorizer, realm: str, settings: ForwardAuthSettings) -> None:
        self._authorizer = authorizer
        self._realm = realm
        self._settings = settings
        self._prefix = settings.path_prefix

    def _original(self, request: web.Request) -> tuple[str, str, str | None]:
        """The forwarded request's method, URI and host, as the caller reports them."""
        headers = request.headers
        own_path = request.raw_path
        if self._prefix and (own_path == self._prefix or own_path.startswith(self._prefix + "/")
                             or own_path.startswith(self._prefix + "?")):
            own_path = own_path[len(self._prefix):] or "/"
            if own_path.startswith("?"):
                own_path = "/" + own_path
        if not self._settings.trusts(request.remote):
            return request.method, own_path, headers.get(hdrs.HOST)
        method = headers.get("X-Forwarded-Method") or headers.get("X-Original-Method")
        uri = headers.get("X-Forwarded-Uri") or headers.get("X-Original-URI")
        host = headers.get("X-Forwarded-Host") or headers.get(hdrs.HOST)
        return (method or request.method).upper(), uri or own_path, host

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Decide the request the caller forwarded."""
        headers = request.headers
        method, uri, host = self._original(request)
        facts = RequestFacts(
            door="forward_auth",
            method=method,
            uri=uri,
            host=host,
            headers=headers,
            cookies=request.cookies if hdrs.COOKIE in headers else _EMPTY,
            client_ip=request.remote,
        )
        rid = request_id(headers)
        decision = await self._authorizer.authorize(facts)
        request[DECISION] = decision
        if not decision.allowed:
            return error_response(decision.reason, rid, self._realm, decision.retry_after)
        response = web.Response(status=200, headers=decision.headers)
        response.headers[REQUEST_ID] = rid
        response.headers[hdrs.CACHE_CONTROL] = "no-store"
        return response
