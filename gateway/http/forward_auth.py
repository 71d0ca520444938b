"""Forward-auth door: Traefik, nginx auth_request, Caddy forward_auth and Envoy ext_authz."""

from __future__ import annotations

from aiohttp import hdrs, web
from multidict import CIMultiDictProxy, istr

from gateway.clients import ClientAddresses
from gateway.config import ForwardAuthSettings
from gateway.http.errors import error_response
from gateway.http.headers import DECISION, REQUEST_ID, REQUEST_ID_KEY, request_id
from gateway.http.observe import RequestObserver
from gateway.pipeline import Authorizer, Decision, RequestFacts
from gateway.reasons import Reason

__all__ = ["ConflictingForwardedRequest", "ForwardAuthHandler"]

X_FORWARDED_HOST = istr("X-Forwarded-Host")
X_FORWARDED_METHOD = istr("X-Forwarded-Method")
X_FORWARDED_URI = istr("X-Forwarded-Uri")
X_ORIGINAL_METHOD = istr("X-Original-Method")
X_ORIGINAL_URI = istr("X-Original-URI")
# Headers an upstream may read as the resource or method to serve. The caller passes a
# client's copies on to the upstream, where the gateway cannot remove them: refused.
_REROUTING = frozenset(istr(spelling) for name in (
    "X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override", "X-HTTP-Method",
    "X-Method-Override") for spelling in (name, name.replace("-", "_")))
# With none of these, the request describes itself: its own method, path and Host.
_DESCRIBING_OR_REROUTING = _REROUTING | {X_FORWARDED_HOST, X_FORWARDED_METHOD, X_FORWARDED_URI,
                                         X_ORIGINAL_METHOD, X_ORIGINAL_URI}


class ConflictingForwardedRequest(Exception):
    """The forwarded request is described twice, differently: one description is spoofed.

    X-Forwarded-* and X-Original-* disagree, a describing header comes twice (readers
    differ on which copy counts), a host or method header holds a list, or the request
    carries a header with which an upstream would serve another resource or method.
    """


def _single(headers: CIMultiDictProxy[str], name: istr) -> str | None:
    """The one value of a header that describes the forwarded request (None: absent)."""
    values = headers.getall(name, None)
    if values is None:
        return None
    if len(values) > 1:
        raise ConflictingForwardedRequest
    return values[0]


def _single_token(headers: CIMultiDictProxy[str], name: istr) -> str | None:
    """As `_single`, for a host or method: a comma-separated list is two values."""
    value = _single(headers, name)
    if value is not None and "," in value:
        raise ConflictingForwardedRequest
    return value


def _disagree(first: tuple[str | None, str | None], second: tuple[str | None, str | None]) -> bool:
    """True when both header families name a value and the values differ."""
    (method, uri), (other_method, other_uri) = first, second  # (no generator: every request)
    return ((method is not None and other_method is not None and method != other_method)
            or (uri is not None and other_uri is not None and uri != other_uri))


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
        # A caller forwards for its client: with no list, every caller is trusted to.
        self._addresses = ClientAddresses(settings.trusted_callers, trust_all_when_empty=True)
        self._prefix = settings.path_prefix
        self.observer = RequestObserver(authorizer.metrics, "forward_auth")

    def _original(self, method: str, own_path: str, trusted: bool,
                  headers: CIMultiDictProxy[str]) -> tuple[str, str, str | None]:
        """The forwarded request's method, URI and host, as the caller reports them."""
        names = headers.keys()  # (a multidict's keys compare case-insensitively, in C)
        described = not names.isdisjoint(_DESCRIBING_OR_REROUTING)
        if described and not names.isdisjoint(_REROUTING):
            raise ConflictingForwardedRequest
        prefix = self._prefix
        if prefix and (own_path == prefix or own_path.startswith(prefix + "/")
                       or own_path.startswith(prefix + "?")):
            own_path = own_path[len(prefix):] or "/"
            if own_path.startswith("?"):
                own_path = "/" + own_path
        if not trusted:
            return method, own_path, headers.get(hdrs.HOST)
        if not described:  # what the reading below would find, without reading
            return method.upper(), own_path, headers.get(hdrs.HOST)
        host = _single_token(headers, X_FORWARDED_HOST) or headers.get(hdrs.HOST)
        source = self._settings.uri_source
        forwarded: tuple[str | None, str | None] = (None, None)
        original: tuple[str | None, str | None] = (None, None)
        if source != "original":
            forwarded = (_single_token(headers, X_FORWARDED_METHOD),
                         _single(headers, X_FORWARDED_URI))
        if source != "forwarded":
            original = (_single_token(headers, X_ORIGINAL_METHOD),
                        _single(headers, X_ORIGINAL_URI))
        if source == "auto" and _disagree(forwarded, original):
            raise ConflictingForwardedRequest
        method = forwarded[0] or original[0] or method
        return method.upper(), forwarded[1] or original[1] or own_path, host

    def facts(self, method: str, own_path: str, remote: str | None,
              headers: CIMultiDictProxy[str],
              memo: dict[object, object] | None = None) -> RequestFacts:
        """The facts of the forwarded request (`memo`: the fast door's for this head, see
        RequestFacts); raises ConflictingForwardedRequest."""
        trusted = self._addresses.trusts(remote)  # once: the URI's source, and the client
        method, uri, host = self._original(method, own_path, trusted, headers)
        # (by position: keywords cost a mapping per call, and this is on every request)
        return RequestFacts("forward_auth", method, uri, host, headers, None, remote,
                            self._addresses, memo)

    def refuse_conflict(self) -> Decision:
        """The (counted) refusal of a request whose two header families disagree."""
        authorizer = self.authorizer
        refused = Decision(Reason.AMBIGUOUS_PATH, authorizer.router.default)
        authorizer.metrics.decision("forward_auth", refused.route.name, refused.reason)
        return refused

    @staticmethod
    def allow_headers(decision: Decision, rid: str) -> tuple[tuple[str, str], ...]:
        """The headers of an allowed answer: identity, request id, never cached."""
        return (*decision.headers, *ForwardAuthHandler.allow_tail(rid))

    @staticmethod
    def allow_tail(rid: str) -> tuple[tuple[str, str], ...]:
        """The headers an allowed answer adds after the identity headers."""
        return (REQUEST_ID, rid), (hdrs.CACHE_CONTROL, "no-store")

    def cors_origin(self, method: str, headers: CIMultiDictProxy[str]) -> str | None:
        """The origin a refusal's CORS headers are for (see CorsPolicy.reader_origin)."""
        cors = self.authorizer.cors
        return cors.reader_origin(method, headers) if cors is not None else None

    def refusal_cors(self, origin: str | None, decision: Decision | None,
                     ) -> list[tuple[str, str]]:
        """CORS headers for a refusal, so a browser on an allowed origin can read its reason
        (the caller returns our refusal to the client as it is)."""
        cors = self.authorizer.cors
        if cors is None or origin is None:
            return []
        route = decision.route if decision is not None else self.authorizer.router.default
        return cors.response_headers(origin, route.name)

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
        method = request.method
        try:
            facts = self.facts(method, request.raw_path, request.remote, headers)
        except ConflictingForwardedRequest:
            decision = self.refuse_conflict()
        else:
            method = facts.method
            decision = await self.authorizer.authorize(facts)
        request[DECISION] = decision
        if not decision.allowed:
            response = error_response(decision.reason, rid, self.realm, decision.retry_after)
            response.headers.extend(self.refusal_cors(self.cors_origin(method, headers),
                                                      decision))
            return response
        return web.Response(status=200, headers=self.allow_headers(decision, rid))
