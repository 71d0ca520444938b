"""Header hygiene for the proxy: hop-by-hop removal, anti-spoofing, X-Forwarded-*, injection.

Client copies of every header the gateway controls are removed first (whatever their case,
and whether they spell `-` as `_`), hop-by-hop headers and the headers the client names in
`Connection` go next, and only then are the forwarded and identity headers added, so a
client can neither spoof an identity header nor make the proxy drop an injected one.

Headers that make an upstream serve another resource, method, host or scheme than the one
the gateway decided on are removed too (REROUTING_HEADERS, REROUTING_PREFIXES): IIS URL
Rewrite and the frameworks that read its `X-Original-URL` / `X-Rewrite-URL` (older Symfony,
Zend and Laminas), method overrides (Rack, Express method-override, ASP.NET Core, Slim,
Plack, OData's `X-HTTP-Method`), path prefixes (Spring's ForwardedHeaderFilter and
Werkzeug's ProxyFix read `X-Forwarded-Prefix`), Envoy's original path, and scheme or host
overrides (`Front-End-Https`, `X-Url-Scheme`, `X-Scheme`, `X-Host`). A method override in a
query or body parameter (`_method`) is the application's own and cannot be removed here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from gateway.clients import ClientAddresses
from gateway.config import Settings

__all__ = [
    "HOP_BY_HOP", "REROUTING_HEADERS", "REROUTING_PREFIXES", "HeaderHygiene", "connection_tokens",
    "end_to_end", "normalize_name", "put",
]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
_FORWARDED = ("x-forwarded-",)
# Client headers some upstream reads as the resource, method, host or scheme to serve.
REROUTING_HEADERS = frozenset({
    "x-rewrite-url",  # ISAPI_Rewrite, IIS; read by older Symfony, Zend and Laminas
    "x-http-method-override", "x-http-method", "x-method-override",  # method overrides
    "front-end-https", "x-url-scheme", "x-scheme",  # scheme (OWA, Rack, Tornado)
    "x-host", "x-http-host-override",  # host overrides
})
# ... and whole families of them: X-Original-URL/-URI/-Path/-Method/-Host (IIS URL Rewrite,
# nginx auth_request), Envoy's original path; `x-forwarded-` (Prefix, Path, Uri, Method,
# Scheme, Ssl, Server, Port...) is removed in any case.
REROUTING_PREFIXES = ("x-original-", "x-envoy-original-")
# Expect: the gateway already answered `100 Continue` to the client itself.
_ALWAYS_STRIPPED = frozenset({"forwarded", "x-real-ip", "x-request-id", "host", "expect"})
_X_FORWARDED_FOR = "X-Forwarded-For"
_X_FORWARDED_PROTO = "X-Forwarded-Proto"
_X_FORWARDED_HOST = "X-Forwarded-Host"
_REQUEST_ID = "X-Request-Id"
_MAX_NAME_SETS = 256  # sets of identity names remembered
Text = TypeVar("Text", str, bytes)


def put(pairs: list[tuple[Text, Text]], lows: list[Text], name: Text, value: Text) -> None:
    """CIMultiDict's `pairs[name] = value` on a list (of str, or of bytes for the heads built
    from bytes): the first occurrence replaced in place, later ones dropped (`lows`: the
    lower-cased names, kept in step)."""
    low = name.lower()
    if low not in lows:
        pairs.append((name, value))
        lows.append(low)
        return
    index = lows.index(low)
    pairs[index] = (name, value)
    while lows.count(low) > 1:
        later = lows.index(low, index + 1)
        del pairs[later], lows[later]


def normalize_name(name: str) -> str:
    """A header name as upstreams may read it: lower case, `_` read as `-`."""
    name = name.lower()
    return name.replace("_", "-") if "_" in name else name


def connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    """The header names listed in every `Connection` header, normalised."""
    return _listed_names(headers.getall(hdrs.CONNECTION, ()))


def _listed_names(values: Iterable[str]) -> frozenset[str]:
    """The header names some `Connection` values list, normalised."""
    return frozenset(
        normalize_name(token.strip()) for value in values for token in value.split(",")
        if token.strip()
    )


class HeaderHygiene:
    """Builds the upstream request headers and the client response headers."""

    def __init__(self, settings: Settings, addresses: ClientAddresses | None = None) -> None:
        proxy = settings.proxy
        controlled = {normalize_name(h) for h in settings.identity_headers.values()}
        controlled.add(normalize_name(settings.assertion.header))
        dropped = set(HOP_BY_HOP) | controlled | _ALWAYS_STRIPPED
        if not proxy.forward_authorization:
            dropped.add("authorization")
        if not proxy.forward_cookies:
            dropped.add("cookie")
        dropped |= REROUTING_HEADERS
        self._dropped = frozenset(dropped)
        self._prefixes = (
            *(normalize_name(p) for p in proxy.strip_header_prefixes), *_FORWARDED, "proxy-",
            *REROUTING_PREFIXES,
        )
        self._preserve_host = proxy.preserve_host
        self._unlisted_names: dict[tuple[str, ...], tuple[frozenset[str], frozenset[str]]] = {}
        # Who may append to X-Forwarded-*: the proxy's own rule (gateway/clients.py).
        self._addresses = addresses or ClientAddresses(proxy.trusted_proxies)

    def upstream_headers(
        self,
        headers: CIMultiDictProxy[str],
        *,
        client_ip: str | None,
        scheme: str,
        identity: Iterable[tuple[str, str]],
        request_id: str,
        websocket: bool = False,
    ) -> CIMultiDict[str]:
        """The headers to send upstream: client's cleaned, then forwarded, then identity."""
        pairs, _ = self.upstream_pairs(headers, client_ip=client_ip, scheme=scheme,
                                       identity=identity, request_id=request_id,
                                       websocket=websocket)
        return CIMultiDict(pairs)

    def upstream_pairs(
        self,
        headers: CIMultiDictProxy[str],
        *,
        client_ip: str | None,
        scheme: str,
        identity: Iterable[tuple[str, str]],
        request_id: str,
        websocket: bool = False,
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """upstream_headers() as a list of pairs (and their lower-cased names), for a head
        built at once: the same headers in the same order."""
        identity = tuple(identity)
        named = connection_tokens(headers)
        unlisted, spelled = self._unlisted(identity)
        dropped = self._dropped
        prefixes = self._prefixes
        out: list[tuple[str, str]] = []
        lows: list[str] = []
        for name, value in headers.items():
            low = name.lower()
            key = low.replace("_", "-") if "_" in low else low
            if key in dropped or key in named or key.startswith(prefixes):
                continue
            if unlisted and key in unlisted and low not in spelled:
                continue  # another spelling of an identity name from a reload (put() below
                # replaces the same spelling in place)
            if websocket and key.startswith("sec-websocket-"):
                continue  # the upstream handshake is the client library's own
            out.append((name, value))
            lows.append(low)
        added = self.added_pairs(headers, client_ip=client_ip, scheme=scheme, identity=identity,
                                 request_id=request_id)
        names = [name.lower() for name, _ in added]
        if len(set(names)) == len(names) and set(lows).isdisjoint(names):
            out += added  # (the client's copies were dropped above: the usual case)
            lows += names
        else:
            for name, value in added:
                put(out, lows, name, value)
        return out, lows

    def added_pairs(
        self,
        headers: MultiMapping[str],
        *,
        client_ip: str | None,
        scheme: str,
        identity: Iterable[tuple[str, str]],
        request_id: str,
    ) -> list[tuple[str, str]]:
        """The headers the gateway adds, in order: X-Forwarded-*, Host when preserved, the
        identity headers, X-Request-Id (each set as `headers[name] = value` would)."""
        added = self.forwarded_pairs(headers, client_ip=client_ip, scheme=scheme)
        added.extend(identity)
        added.append((_REQUEST_ID, request_id))
        return added

    def trusts(self, client_ip: str | None) -> bool:
        """True when the peer may append to X-Forwarded-* (forwarded_pairs() then reads the
        client's own); otherwise forwarded_pairs() depends on the peer, scheme and Host alone."""
        return self._addresses.trusts(client_ip)

    def forwarded_pairs(self, headers: MultiMapping[str], *, client_ip: str | None,
                        scheme: str) -> list[tuple[str, str]]:
        """The first of the added_pairs(): X-Forwarded-*, then Host when preserved."""
        host = headers.get(hdrs.HOST)
        added: list[tuple[str, str]] = []
        trusted = self._addresses.trusts(client_ip)
        if trusted:
            chain = ", ".join(headers.getall(_X_FORWARDED_FOR, ()))
            added.append((_X_FORWARDED_FOR, f"{chain}, {client_ip}" if chain else client_ip or ""))
            added.append((_X_FORWARDED_PROTO, headers.get(_X_FORWARDED_PROTO) or scheme))
            forwarded_host = headers.get(_X_FORWARDED_HOST) or host
        else:
            if client_ip:
                added.append((_X_FORWARDED_FOR, client_ip))
            added.append((_X_FORWARDED_PROTO, scheme))
            forwarded_host = host
        if forwarded_host:
            added.append((_X_FORWARDED_HOST, forwarded_host))
        if self._preserve_host and host:
            added.append((hdrs.HOST, host))
        return added

    def _unlisted(self, identity: tuple[tuple[str, str], ...]
                  ) -> tuple[frozenset[str], frozenset[str]]:
        """The identity names, normalised, this hygiene does not drop already (names a
        configuration reload gave the verifier after the proxy was built), and the identity
        names lower-cased; remembered per set of names (they come from the configuration)."""
        names = tuple([name for name, _ in identity])
        known = self._unlisted_names.get(names)
        if known is None:
            unlisted = frozenset(
                key for key in map(normalize_name, names)
                if key not in self._dropped and not key.startswith(self._prefixes))
            known = unlisted, frozenset(name.lower() for name in names)
            if len(self._unlisted_names) < _MAX_NAME_SETS:
                self._unlisted_names[names] = known
        return known

    @property
    def dropped(self) -> frozenset[str]:
        """The normalised names of the client headers always removed."""
        return self._dropped

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The normalised name prefixes of the client headers always removed."""
        return self._prefixes

    @property
    def preserve_host(self) -> bool:
        """`proxy.preserve_host`: the client's Host goes upstream (else the upstream's)."""
        return self._preserve_host

    @staticmethod
    def response_headers(headers: MultiMapping[str]) -> CIMultiDict[str]:
        """The upstream's response headers without hop-by-hop ones."""
        return CIMultiDict(end_to_end(list(headers.items())))


def end_to_end(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response header pairs without hop-by-hop ones and those `Connection` names (every
    door's response headers, in order)."""
    lows = [name.lower() for name, _ in pairs]
    hop = HOP_BY_HOP
    if "connection" in lows:
        hop = hop | _listed_names(
            value for (_, value), low in zip(pairs, lows, strict=True) if low == "connection")
    return [pair for pair, low in zip(pairs, lows, strict=True) if low not in hop]
