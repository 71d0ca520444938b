"""The one authorization pipeline every door goes through: facts in, Decision out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import hdrs
from multidict import CIMultiDictProxy

from gateway.auth.assertion import AssertionSigner
from gateway.auth.claims import Identity
from gateway.auth.classify import MACHINE_TYPE_NAMES, opaque_token_type
from gateway.auth.extract import (
    AmbiguousToken,
    EmptyToken,
    TokenExtractor,
    UnreadableToken,
    effective_sources,
)
from gateway.auth.jwks import KeysUnavailable
from gateway.auth.verify import TokenRejected, Verified, Verifier
from gateway.clients import ClientAddresses
from gateway.config import Settings
from gateway.cors import CorsPolicy
from gateway.metrics import Metrics
from gateway.reasons import Reason
from gateway.routing import AmbiguousPath, Route, Router

__all__ = [
    "Authorizer", "Decision", "NoRevocation", "RequestFacts", "RevocationCheck", "extractor_for",
    "router_for",
]


_MEMO_ENTRIES = 8  # what is kept per request head: for each (method, URI, Host), which a
#                   forwarded URI's trust can change, the located token and its decision


@dataclass(slots=True)
class RequestFacts:
    """What the pipeline needs to know about one request, whichever door it came in by."""

    door: str
    method: str
    uri: str
    host: str | None
    headers: CIMultiDictProxy[str]  # cookies are read from these, only when needed
    query: Mapping[str, str] | None = None
    client_ip: str | None = None
    addresses: ClientAddresses | None = None  # the door's rule for who the client is
    # What the pipeline worked out before from a request head of the very same bytes: a fast
    # door's memo of heads hands every such request the same dict (None: nothing kept).
    memo: dict[object, object] | None = None

    def client_address(self) -> str | None:
        """The client's address as gateway/clients.py defines it (the peer's own when the
        door has no rule); it keys the per-client budget of Backend API look-ups."""
        if self.addresses is None:
            return self.client_ip
        return self.addresses.of(self.client_ip, self.headers) or None


# Decision and _Located are made on every request and never changed once made. They are not
# declared frozen: a frozen dataclass's __init__ calls object.__setattr__ once per field, which
# doubled the cost of building a Decision on the fast doors' path.
@dataclass(slots=True)
class Decision:
    """The pipeline's answer: allow with identity headers, or deny with a reason."""

    reason: Reason
    route: Route
    identity: Identity | None = None
    headers: tuple[tuple[str, str], ...] = ()
    path: str = "/"
    retry_after: int | None = None
    detail: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    presented_type: str | None = None  # a refused credential's type, when it was classified

    @property
    def allowed(self) -> bool:
        """True when the request may go through."""
        return self.reason.allowed

    @property
    def token_type(self) -> str | None:
        """The presented credential's type, once known (metrics and the access log)."""
        identity = self.identity
        return identity.token_type if identity is not None else self.presented_type


@dataclass(slots=True)
class _Located:
    """A request routed to a rule that needs a token, and the token it carries (and the key
    the verified-token cache holds it under: kept with a known head, it is worked out once)."""

    route: Route
    path: str
    params: Mapping[str, str]
    token: str
    key: bytes | None  # (None: not worked out, or too long to be verified)


class RevocationCheck(Protocol):
    """Decides whether a verified identity has been revoked since its token was issued."""

    async def check(self, identity: Identity) -> Reason | None:
        """None when still valid, else REVOKED or REVOCATION_UNAVAILABLE."""

    def check_now(self, identity: Identity) -> tuple[bool, Reason | None]:
        """(settled, reason) from what is known locally; settled is False when I/O is needed."""


class NoRevocation:
    """The revocation check used when no revocation source is configured."""

    async def check(self, identity: Identity) -> Reason | None:
        """Nothing is ever revoked."""
        return None

    def check_now(self, identity: Identity) -> tuple[bool, Reason | None]:
        """Nothing is ever revoked, and that is always known."""
        return True, None


def router_for(settings: Settings) -> Router:
    """The route table the settings declare."""
    return Router(settings.routes, settings.route_options,
                  max_path_escapes=settings.limits.max_path_escapes,
                  max_path_segments=settings.limits.max_path_segments)


def extractor_for(settings: Settings) -> TokenExtractor:
    """The token sources the settings declare (plus the WebSocket query in proxy mode)."""
    return TokenExtractor(effective_sources(
        settings.token_sources, settings.upstream, settings.proxy.websocket_query_token))


def _from_authorization(headers: CIMultiDictProxy[str], token: str) -> bool:
    """True when the token is the request's one `Authorization: Bearer` credential."""
    values = headers.getall(hdrs.AUTHORIZATION, ())
    if len(values) != 1:
        return False
    parts = values[0].split(None, 1)
    return len(parts) == 2 and parts[0].lower() == "bearer" and parts[1].strip() == token


def _outside_authorization(facts: RequestFacts, located: _Located,
                           token_type: str) -> Decision | None:
    """The refusal of a machine credential read from anywhere but Authorization (as Clerk)."""
    if token_type not in MACHINE_TYPE_NAMES or _from_authorization(facts.headers, located.token):
        return None
    return Decision(Reason.TOKEN_TYPE_NOT_ACCEPTED, located.route, path=located.path,
                    detail="machine credentials are read from the Authorization header only",
                    presented_type=token_type)


class Authorizer:
    """Runs route matching, token extraction, verification, revocation and policy."""

    def __init__(
        self,
        router: Router,
        extractor: TokenExtractor,
        verifier: Verifier,
        metrics: Metrics,
        revocation: RevocationCheck | None = None,
        assertions: AssertionSigner | None = None,
        cors: CorsPolicy | None = None,
    ) -> None:
        self.cors = cors
        self.router = router
        self.extractor = extractor
        self.verifier = verifier
        self.metrics = metrics
        self.revocation: RevocationCheck = revocation or NoRevocation()
        self.assertions = assertions

    async def authorize(self, facts: RequestFacts) -> Decision:
        """Decide one request, and count the decision."""
        decision = await self._decide(facts)
        self.metrics.decision(facts.door, decision.route.name, decision.reason)
        return decision

    async def decide(self, facts: RequestFacts) -> Decision:
        """Decide one request without counting it (for a door that may refuse it further)."""
        return await self._decide(facts)

    def authorize_now(self, facts: RequestFacts) -> Decision | None:
        """Decide one request without waiting, and count it; None when that needs I/O.

        This is `authorize` for the requests every caller repeats: a token already verified
        and a revocation status already known locally. Anything else (a token not seen yet,
        a revocation status to fetch) returns None, uncounted, for `authorize` to decide.
        """
        # (a head not seen before, the usual case but for repeated requests: one call less)
        located = (self._locate_anew(facts, False) if facts.memo is None
                   else self._locate(facts))
        if isinstance(located, _Located):
            verified = self.verifier.verified_now(located.token, located.route.rule.accepts,
                                                  located.key)
            if verified is None:
                return None
            token_type = verified.identity.token_type
            decision = (_outside_authorization(facts, located, token_type)
                        if token_type in MACHINE_TYPE_NAMES else None)
            if decision is None:
                settled, revoked = self.revocation.check_now(verified.identity)
                if not settled:
                    return None
                memo = facts.memo
                decision = (self._settle(located, verified, revoked) if memo is None
                            else self._settled(memo, located, verified, revoked))
        else:
            decision = located
        self.metrics.decision(facts.door, decision.route.name, decision.reason)
        return decision

    async def _decide(self, facts: RequestFacts) -> Decision:
        located = self._locate(facts)
        if not isinstance(located, _Located):
            return located
        opaque = opaque_token_type(located.token)
        if opaque is not None:
            refused = _outside_authorization(facts, located, opaque.value)
            if refused is not None:
                return refused
        try:
            verified = await self.verifier.verify(
                located.token, located.route.rule.accepts, facts.client_address)
        except TokenRejected as exc:
            return Decision(exc.reason, located.route, path=located.path, detail=exc.detail,
                            retry_after=exc.retry_after, presented_type=exc.token_type)
        except KeysUnavailable as exc:
            return Decision(Reason.KEYS_UNAVAILABLE, located.route, path=located.path,
                            retry_after=exc.retry_after)
        refused = _outside_authorization(facts, located, verified.identity.token_type)
        if refused is not None:
            return refused
        revoked = await self.revocation.check(verified.identity)
        return self._settle(located, verified, revoked)

    def _locate(self, facts: RequestFacts) -> Decision | _Located:
        """Normalise, route and extract: a Decision when no token needs verifying. A token to
        verify is remembered in the facts' memo, by all else it was worked out from (the head
        is the memo's own; the router and extractor change with a reload)."""
        memo = facts.memo
        if memo is None or facts.query is not None:
            return self._locate_anew(facts, False)
        made_of = (self.router, self.extractor, self.cors, facts.method, facts.uri, facts.host)
        located = memo.get(made_of)
        if isinstance(located, _Located):
            return located
        found = self._locate_anew(facts, True)
        if isinstance(found, _Located):
            if len(memo) >= _MEMO_ENTRIES:
                memo.clear()
            memo[made_of] = found
        return found

    def _locate_anew(self, facts: RequestFacts, kept: bool) -> Decision | _Located:
        """_locate() itself (`kept`: the located token is kept, its cache key with it)."""
        router = self.router  # read once: a reload may swap it while this request waits
        try:
            path, match = router.locate(facts.method, facts.uri, facts.host)
        except AmbiguousPath as exc:
            return Decision(Reason.AMBIGUOUS_PATH, router.default, detail=str(exc))
        cors = self.cors
        if cors is not None and cors.is_preflight(facts.method, facts.headers):
            preflight = self._preflight(cors, router, facts, path)
            if preflight is not None:
                return preflight
        route = match.route
        access = route.rule.access
        if access == "public":
            return Decision(Reason.PUBLIC, route, path=path, params=match.params)
        if access == "deny":
            return Decision(Reason.ACCESS_DENIED, route, path=path, params=match.params)
        try:
            token = self.extractor.extract(facts.headers, facts.query)
        except AmbiguousToken as exc:
            return Decision(Reason.AMBIGUOUS_TOKEN, route, path=path, detail=str(exc))
        except (EmptyToken, UnreadableToken):
            return Decision(Reason.MALFORMED_TOKEN, route, path=path)
        if token is None:
            reason = Reason.ANONYMOUS if access == "optional" else Reason.MISSING_TOKEN
            return Decision(reason, route, path=path, params=match.params)
        return _Located(route, path, match.params, token,
                        self.verifier.cache_key(token) if kept else None)

    def _preflight(self, cors: CorsPolicy, router: Router, facts: RequestFacts, path: str,
                   ) -> Decision | None:
        """A preflight from an allowed origin, decided for the route of the method it asks
        about (no token: browsers never send one); None (counted) for any other preflight."""
        asked = facts.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD]
        match = router.match(asked, path, facts.host)
        allowed = (match.route.rule.access != "deny"
                   and cors.allows_preflight(facts.headers, match.route.name))
        self.metrics.cors_preflight(facts.door, allowed)
        if not allowed:
            return None
        return Decision(Reason.PREFLIGHT, match.route, path=path, params=match.params)

    def _settled(self, memo: dict[object, object], located: _Located,
                 verified: Verified, revoked: Reason | None) -> Decision:
        """_settle(), kept in the facts' memo: the same located token (route, path, params)
        and the same verification (the token cache's entry) meet the route's rule alike.
        Not when revoked; with signed assertions, only while the signer still hands out the
        same assertion (it reuses one while fresh) for the identity and route."""
        if revoked is not None:
            return self._settle(located, verified, revoked)
        kept = memo.get(id(located))  # (the entry holds the object: its id stays its own)
        if isinstance(kept, tuple) and kept[0] is located and kept[1] is verified:
            decision: Decision = kept[2]
            assertions = self.assertions
            if assertions is None or not decision.allowed or assertions.headers(
                    verified.identity, verified.headers, located.route.name) is decision.headers:
                return decision
        decision = self._settle(located, verified, revoked)
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()
        memo[id(located)] = (located, verified, decision)
        return decision

    def _settle(self, located: _Located, verified: Verified, revoked: Reason | None) -> Decision:
        """The decision for a verified token: revoked, refused by the route's rule, or OK
        (with the signed assertion among the identity headers when assertions are on)."""
        identity = verified.identity
        route = located.route
        if revoked is not None:
            return Decision(revoked, route, identity=identity, path=located.path, retry_after=1)
        unmet = route.rule.check(identity, located.params)
        if unmet is not None:
            return Decision(unmet.reason, route, identity=identity, path=located.path,
                            detail=unmet.requirement, params=located.params)
        headers = verified.headers
        assertions = self.assertions
        if assertions is not None:
            headers = assertions.headers(identity, headers, route.name)
        return Decision(Reason.OK, route, identity, headers, located.path,
                        params=located.params)
