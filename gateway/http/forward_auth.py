"""Forward-auth door: Traefik, nginx auth_request, Caddy forward_auth and Envoy ext_authz."""

from __future__ import annotations

from aiohttp import hdrs, web

from gateway.config import ForwardAuthSettings
from gateway.http.errors import error_response
from gateway.http.headers import DECISION, REQUEST_ID, REQUEST_ID_KEY, request_id
from gateway.http.observe import RequestObserver
from gateway.pipeline import Authorizer, Decision, RequestFacts
from gateway.reasons import Reason

__all__ = ["ForwardAuthHandler"]

_EMPTY: dict[str, str] = {}


class ConflictingForwardedRequest(Exception):
    """X-Forwarded-* and X-Original-* describe different requests: one of them is spoofed."""


def _disagree(first: tuple[str | None, str | None], second: tuple[str | None, str | None]) -> bool:
    """True when both header families name a value and the values differ."""
    return any(a is not None and b is not None and a != b for a, b in zip(first, second,
                                                                            strict=True))


class ForwardAuthHandler:
    """Answers 200 with identity headers, or 401/403/400/503 with a JSON body; never a 3xx."""

    def __init__(self, authorizer: Authorizer, realm: str, settings: ForwardAuthSettings) -> None:
        self._authorizer = authorizer
        self._realm = realm
        self._settings = settings
        self._prefix = settings.path_prefix
        self._observer = RequestObserver(authorizer.metrics, "forward_auth")

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
        host = headers.get("X-Forwarded-Host") or headers.get(hdrs.HOST)
        source = self._settings.uri_source
        forwarded = (headers.get("X-Forwarded-Method"), headers.get("X-Forwarded-Uri"))
        original = (headers.get("X-Original-Method"), headers.get("X-Original-URI"))
        if source == "forwarded":
            original = (None, None)
        elif source == "original":
            forwarded = (None, None)
        elif _disagree(forwarded, original):
            raise ConflictingForwardedRequest
        method = forwarded[0] or original[0] or request.method
        return method.upper(), forwarded[1] or original[1] or own_path, host

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Decide the request the caller forwarded, observed for metrics and the access log."""
        started = self._observer.begin()
        response: web.StreamResponse | None = None
        try:
            response = await self._decide(request)
            return response
        finally:
            self._observer.end(
                started, request.get(REQUEST_ID_KEY, ""), request.method,
                response.status if response is not None else 500, request.get(DECISION))

    async def _decide(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        rid = request[REQUEST_ID_KEY] = request_id(headers)
        try:
            method, uri, host = self._original(request)
        except ConflictingForwardedRequest:
            authorizer = self._authorizer
            refused = Decision(Reason.AMBIGUOUS_PATH, authorizer.router.default)
            request[DECISION] = refused
            authorizer.metrics.decision("forward_auth", refused.route.name, refused.reason)
            return error_response(refused.reason, rid, self._realm)
        facts = RequestFacts(
            door="forward_auth",
            method=method,
            uri=uri,
            host=host,
            headers=headers,
            cookies=request.cookies if hdrs.COOKIE in headers else _EMPTY,
            client_ip=request.remote,
        )
        decision = await self._authorizer.authorize(facts)
        request[DECISION] = decision
        if not decision.allowed:
            return error_response(decision.reason, rid, self._realm, decision.retry_after)
        return web.Response(status=200, headers=(
            *decision.headers, (REQUEST_ID, rid), (hdrs.CACHE_CONTROL, "no-store")))
