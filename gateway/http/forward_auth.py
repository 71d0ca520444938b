"""Forward-auth door: Traefik, nginx auth_request, Caddy forward_auth and Envoy ext_authz."""

from __future__ import annotations

from aiohttp import hdrs, web

from gateway.http.errors import error_response
from gateway.http.headers import DECISION, REQUEST_ID, request_id
from gateway.pipeline import Authorizer, RequestFacts

__all__ = ["ForwardAuthHandler"]

_EMPTY: dict[str, str] = {}


class ForwardAuthHandler:
    """Answers 200 with identity headers, or 401/403/400/503 with a JSON body; never a 3xx."""

    def __init__(self, authorizer: Authorizer, realm: str) -> None:
        self._authorizer = authorizer
        self._realm = realm

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Decide the request the caller forwarded."""
        headers = request.headers
        method = (
            headers.get("X-Forwarded-Method")
            or headers.get("X-Original-Method")
            or request.method
        ).upper()
        uri = headers.get("X-Forwarded-Uri") or headers.get("X-Original-URI") or request.raw_path
        host = headers.get("X-Forwarded-Host") or headers.get(hdrs.HOST)
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
