"""CORS: the `cors:` settings and the policy both doors apply to browsers' cross-origin calls.

A browser calling an API behind the gateway from another origin first sends a preflight
(`OPTIONS` with `Origin` and `Access-Control-Request-Method`, never a token). The pipeline
recognises a preflight from an allowed origin asking for an allowed method and headers and
decides it `preflight` (allowed, no identity): proxy mode answers it itself, forward-auth lets
it through to the upstream. Responses to an allowed origin carry the CORS headers, the
gateway's own refusals included, so the browser can read the reason. A disallowed origin gets
no CORS header at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from aiohttp import hdrs

from gateway.config_issuers import IssuerSettings
from gateway.configreader import Reader

__all__ = [
    "DEFAULT_EXPOSED_HEADERS", "DEFAULT_HEADERS", "DEFAULT_METHODS", "CorsPolicy", "CorsRule",
    "CorsSettings", "is_origin", "parse_cors",
]

DEFAULT_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_HEADERS = ("Authorization", "Content-Type")
DEFAULT_EXPOSED_HEADERS = ("X-Request-Id", "WWW-Authenticate", "Retry-After")
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


@dataclass(frozen=True)
class CorsRule:
    """What one route (or the whole gateway) allows cross-origin."""

    enabled: bool = True
    origins: frozenset[str] = frozenset()
    methods: tuple[str, ...] = DEFAULT_METHODS
    headers: tuple[str, ...] = DEFAULT_HEADERS
    exposed_headers: tuple[str, ...] = DEFAULT_EXPOSED_HEADERS
    allow_credentials: bool = False
    max_age_seconds: int = 600

    @property
    def active(self) -> bool:
        """True when the rule can allow any origin at all."""
        return self.enabled and bool(self.origins)

    def allows_origin(self, origin: str) -> bool:
        """True for an origin this rule lets read responses."""
        return self.enabled and (origin in self.origins or (
            "*" in self.origins and origin != "null"))


@dataclass(frozen=True)
class CorsSettings:
    """The `cors:` section: a gateway-wide rule and per-route overrides (by route name)."""

    rule: CorsRule = field(default_factory=CorsRule)
    routes: Mapping[str, CorsRule] = field(default_factory=dict)


def is_origin(value: str) -> bool:
    """True for a serialized origin: http(s)://host[:port], nothing else."""
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok
            and not parts.path and not parts.query and not parts.fragment
            and not parts.username and "#" not in value and "?" not in value
            and value == value.lower())


def _origins(reader: Reader, default: frozenset[str]) -> frozenset[str]:
    if not reader.has("allowed_origins"):
        return default
    origins = reader.str_list("allowed_origins")
    for origin in origins:
        if origin != "*" and not is_origin(origin):
            reader.problem(f"{origin!r} is not an origin (scheme://host[:port] in lower case, "
                           "no path, no trailing slash)", "allowed_origins")
    return frozenset(origins)


def _rule(reader: Reader, base: CorsRule) -> CorsRule:
    methods = tuple(m.upper() for m in reader.str_list("allowed_methods", base.methods))
    headers = reader.str_list("allowed_headers", base.headers)
    exposed = reader.str_list("exposed_headers", base.exposed_headers)
    for key, names in (("allowed_headers", headers), ("exposed_headers", exposed),
                       ("allowed_methods", methods)):
        for name in names:
            reader.header_name(key, name)  # methods are tokens too
    rule = replace(
        base,
        enabled=reader.flag("enabled", base.enabled),
        origins=_origins(reader, base.origins),
        methods=methods,
        headers=headers,
        exposed_headers=exposed,
        allow_credentials=reader.flag("allow_credentials", base.allow_credentials),
        max_age_seconds=reader.integer("max_age_seconds", base.max_age_seconds, minimum=0,
                                       maximum=86400),
    )
    if rule.allow_credentials and "*" in rule.origins:
        reader.problem("allowed_origins '*' cannot be combined with allow_credentials: true "
                       "(every site could read credentialed responses)")
    return rule


def parse_cors(reader: Reader, issuers: Iterable[IssuerSettings],
               route_names: Iterable[str]) -> CorsSettings:
    """Read the `cors` section; allowed origins default to the issuers' authorized parties."""
    parties = frozenset(p for i in issuers for p in i.authorized_parties if is_origin(p))
    rule = _rule(reader, CorsRule(origins=parties))
    known = set(route_names)
    overrides: dict[str, CorsRule] = {}
    routes = reader.child("routes")
    for name in routes.data:
        if name not in known:
            routes.problem("no route has this name", str(name))
        overrides[str(name)] = _rule(routes.child(str(name)), rule)
    reader.check_unknown()
    return CorsSettings(rule, overrides)


class CorsPolicy:
    """Applies the CORS settings to requests and responses (the same way at every door)."""

    def __init__(self, settings: CorsSettings) -> None:
        self._default = settings.rule
        self._routes = dict(settings.routes)
        # Off unless some rule can allow an origin: then the upstream's own CORS is left alone.
        self.enabled = self._default.active or any(r.active for r in self._routes.values())

    def rule(self, route: str) -> CorsRule:
        """The rule of a route (the gateway-wide one unless overridden)."""
        return self._routes.get(route, self._default)

    def is_preflight(self, method: str, headers: Mapping[str, str]) -> bool:
        """True for a CORS preflight: OPTIONS with Origin and Access-Control-Request-Method."""
        return (self.enabled and method == hdrs.METH_OPTIONS and hdrs.ORIGIN in headers
                and hdrs.ACCESS_CONTROL_REQUEST_METHOD in headers)

    def reader_origin(self, method: str, headers: Mapping[str, str]) -> str | None:
        """The origin a response's CORS headers would be for: none without an Origin, and
        none for a preflight the pipeline did not allow (its refusal must not look allowed),
        and none while no rule can allow an origin (response_headers() would add nothing)."""
        if not self.enabled or self.is_preflight(method, headers):
            return None
        return headers.get(hdrs.ORIGIN)

    def allows_preflight(self, headers: Mapping[str, str], route: str) -> bool:
        """True when the route's rule allows the origin, the method and every header asked."""
        rule = self.rule(route)
        if not rule.allows_origin(headers[hdrs.ORIGIN]):
            return False
        if headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD] not in rule.methods:
            return False
        allowed = {h.lower() for h in rule.headers}
        asked = headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
        return all(h.strip().lower() in allowed for h in asked.split(",") if h.strip())

    def preflight_headers(self, origin: str, route: str) -> list[tuple[str, str]]:
        """The answer's headers to an allowed preflight."""
        rule = self.rule(route)
        pairs: list[tuple[str, str]] = [
            (hdrs.ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (hdrs.ACCESS_CONTROL_ALLOW_METHODS, ", ".join(rule.methods)),
            (hdrs.ACCESS_CONTROL_MAX_AGE, str(rule.max_age_seconds)),
            (hdrs.VARY, _PREFLIGHT_VARY),
        ]
        if rule.headers:
            pairs.append((hdrs.ACCESS_CONTROL_ALLOW_HEADERS, ", ".join(rule.headers)))
        if rule.allow_credentials:
            pairs.append((hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
        return pairs

    def response_headers(self, origin: str | None, route: str) -> list[tuple[str, str]]:
        """The CORS headers of a response to `origin` (none for a disallowed one)."""
        if origin is None or not self.enabled:
            return []
        rule = self.rule(route)
        if not rule.allows_origin(origin):
            return []
        pairs: list[tuple[str, str]] = [
            (hdrs.ACCESS_CONTROL_ALLOW_ORIGIN, origin), (hdrs.VARY, hdrs.ORIGIN)]
        if rule.exposed_headers:
            pairs.append((hdrs.ACCESS_CONTROL_EXPOSE_HEADERS, ", ".join(rule.exposed_headers)))
        if rule.allow_credentials:
            pairs.append((hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
        return pairs
