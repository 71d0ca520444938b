"""Forward-auth door: Traefik, nginx auth_request, Caddy forward_auth and Envoy ext_authz."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import hdrs, web
from aiohttp._cookie_helpers import parse_cookie_header  # what request.cookies uses
from multidict import CIMultiDictProxy, istr

from gateway.config import ForwardAuthSettings
from gateway.http.errors import error_response
from gateway.http.headers import DECISION, REQUEST_ID, REQUEST_ID_KEY, request_id
from gateway.http.observe import RequestObserver
from gateway.pipeline import Authorizer, Decision, RequestFacts
from gateway.reasons import Reason

__all__ = ["ConflictingForwardedRequest", "ForwardAuthHandler"]

_EMPTY: dict[str, str] = {}
X_FORWARDED_HOST = istr("X-Forwarded-Host")
X_FORWARDED_METHOD = istr("X-Forwarded-Method")
X_FORWARDED_URI = istr("X-Forwarded-Uri")
X_ORIGINAL_METHOD = istr("X-Original-Method")
X_ORIGINAL_URI = istr("X-Original-URI")


def _cookies(header: str) -> Mapping[str, str]:
    """The cookies of a Cookie header, parsed as aiohttp parses `request.cookies`."""
    return {name: morsel.value for name, morsel in parse_cookie_header(header)}


class ConflictingForwardedRequest(Exception):
    """X-Forwarded-* and X-Original-* describe different requests: one of them is spoofed."""


def _disagree(first: tuple[str | None, str | None], second: tuple[str | None, str | None]) -> bool:
    """True when both header families name a value and the values differ."""
    return any(a is not None and b is not None and a != b for a, b in zip(first, second,
                                                                            strict=True))


class ForwardAuthHandler:
    """Answers 200 with identity headers, or 401/403/400/503 with a JSON body; never a 3xx.

    The pieces (`facts`, `refuse_conflict`, `allow_headers`) are shared with the fast door
    (gateway/http/fast_door.py), which answers repeat requests without aiohttp's request
    objects: both doors decide and answer alike.
    """

    def __init__(self, authorizer: Authorizer, realm: str, settings: ForwardAuthSettings) -> None:
        self.authorizer = authorizer
        self.realm = realm
        self._settings = settings
        self._prefix = settings.path_prefix
        self.observer = RequestObserver(authorizer.metrics, "forward_auth")

    def _original(self, method: str, own_path: str, remote: str | None,
                  headers: CIMultiDictProxy[str]) -> tuple[str, str, str | None]:
        """The forwarded request's method, URI and host, as the caller reports them."""
        prefix = self._prefix
        if prefix and (own_path == prefix or own_path.startswith(prefix + "/")
                       or own_path.startswith(prefix + "?")):
            own_path = own_path[len(prefix):] or "/"
            if own_path.startswith("?"):
                own_path = "/" + own_path
        if not self._settings.trusts(remote):
            return method, own_path, headers.get(hdrs.HOST)
        host = headers.get(X_FORWARDED_HOST) or headers.get(hdrs.HOST)
        source = self._settings.uri_source
        forwarded = (headers.get(X_FORWARDED_METHOD), headers.get(X_FORWARDED_URI))
        original = (headers.get(X_ORIGINAL_METHOD), headers.get(X_ORIGINAL_URI))
        if source == "forwarded":
            original = (None, None)
        elif source == "original":
            forwarded = (None, None)
        elif _disagree(forwarded, original):
            raise ConflictingForwardedRequest
        method = forwarded[0] or original[0] or method
        return method.upper(), forwarded[1] or original[1] or own_path, host

    def facts(self, method: str, own_path: str, remote: str | None,
              headers: CIMultiDictProxy[str]) -> RequestFacts:
        """The facts of the forwarded request; raises ConflictingForwardedRequest."""
        method, uri, host = self._original(method, own_path, remote, headers)
        cookie = headers.get(hdrs.COOKIE)
        cookies = _cookies(cookie) if cookie is not None else _EMPTY
        return RequestFacts(door="forward_auth", method=method, uri=uri, host=host,
                            headers=headers, cookies=cookies, client_ip=remote,
                            trusted_peer=self._settings.trusts(remote))

    def refuse_conflict(self) -> Decision:
        """The (counted) refusal of a request whose two header families disagree."""
        authorizer = self.authorizer
        refused = Decision(Reason.AMBIGUOUS_PATH, authorizer.router.default)
        authorizer.metrics.decision("forward_auth", refused.route.name, refused.reason)
        return refused

    @staticmethod
    def allow_headers(decision: Decision, rid: str) -> tuple[tuple[str, str], ...]:
        """The headers of an allowed answer: identity, request id, never cached."""
        return (*decision.headers, (REQUEST_ID, rid), (hdrs.CACHE_CONTROL, "no-store"))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Decide the request the caller forwarded, observed for metrics and the access log."""
        started = self.observer.begin()
        response: web.StreamResponse | None = None
        try:
            response = await self._decide(request)
            return response
        finally:
            self.observer.end(
                started, request.get(REQUEST_ID_KEY, ""), request.method,
                response.status if response is not None else 500, request.get(DECISION))

    async def _decide(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        rid = request[REQUEST_ID_KEY] = request_id(headers)
        try:
            facts = self.facts(request.method, request.raw_path, request.remote, headers)
        except ConflictingForwardedRequest:
            decision = self.refuse_conflict()
        else:
            decision = await self.authorizer.authorize(facts)
        request[DECISION] = decision
        if not decision.allowed:
            return error_response(decision.reason, rid, self.realm, decision.retry_after)
        return web.Response(status=200, headers=self.allow_headers(decision, rid))
