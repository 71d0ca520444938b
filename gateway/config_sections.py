"""Settings sections: token sources, identity headers, proxy, revocation, forward-auth."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from gateway.config_issuers import IssuerSettings
from gateway.configreader import Reader, check_key_url

__all__ = [
    "DEFAULT_IDENTITY_HEADERS",
    "DEFAULT_TOKEN_SOURCES",
    "FAILURE_MODES",
    "IDENTITY_FIELDS",
    "ForwardAuthSettings",
    "LimitSettings",
    "ProxySettings",
    "RevocationSettings",
    "TokenSource",
    "address_in",
    "parse_forward_auth",
    "parse_identity_headers",
    "parse_limits",
    "parse_networks",
    "parse_proxy",
    "parse_revocation",
    "parse_token_sources",
]

IDENTITY_FIELDS = (
    "user_id", "org_id", "org_role", "org_slug", "org_permissions", "session_id",
    "plan", "features", "actor_id", "issuer", "token_id",
)
DEFAULT_IDENTITY_HEADERS: Mapping[str, str] = {
    "user_id": "X-User-Id",
    "org_id": "X-Org-Id",
    "org_role": "X-Role",
    "org_slug": "X-Org-Slug",
    "org_permissions": "X-Org-Permissions",
    "session_id": "X-Session-Id",
    "plan": "X-Plan",
    "features": "X-Features",
    "actor_id": "X-Actor-Id",
}


FAILURE_MODES = ("fail_closed", "fail_open")


@dataclass(frozen=True)
class RevocationSettings:
    """Revocation store, local cache, webhooks and session introspection."""

    entry_ttl_seconds: float = 3600.0
    local_ttl_seconds: float = 1.0
    store_timeout_seconds: float = 0.5
    store_retry_seconds: float = 1.0
    store_grace_seconds: float = 5.0
    on_store_error: str = "fail_closed"
    key_prefix: str = "clerk-gateway"
    webhook_max_body_bytes: int = 1024**2
    introspection: bool = False
    introspection_ttl_seconds: float = 60.0
    introspection_grace_seconds: float = 60.0
    introspection_failure_mode: str = "fail_closed"
    introspection_timeout_seconds: float = 2.0
    introspection_cache_size: int = 100_000


@dataclass(frozen=True)
class ForwardAuthSettings:
    """How forward-auth callers are trusted and how Envoy's path prefix is removed."""

    trusted_callers: tuple[IPv4Network | IPv6Network, ...] = ()
    path_prefix: str = ""
    uri_source: str = "auto"
    fast_path: bool = True  # repeat decisions answered by the fast door (http/fast_door.py)

    def trusts(self, address: str | None) -> bool:
        """True when this caller may say which request it forwards (all, when none listed)."""
        return not self.trusted_callers or address_in(address, self.trusted_callers)


@dataclass(frozen=True)
class TokenSource:
    """Where a token may be read from: a header (with scheme), a cookie or a query parameter."""

    kind: str
    name: str
    scheme: str | None = None


DEFAULT_TOKEN_SOURCES = (
    TokenSource("header", "Authorization", "Bearer"),
    TokenSource("cookie", "__session"),
)


@dataclass(frozen=True)
class ProxySettings:
    """How the sidecar proxy talks to upstreams and treats headers (YAML `proxy:`)."""

    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 60.0
    max_body_bytes: int = 1024**3  # 1 GiB; 0 = unlimited
    max_connections: int = 256
    max_connections_per_upstream: int = 128
    keepalive_seconds: float = 30.0
    preserve_host: bool = True
    forward_authorization: bool = True
    forward_cookies: bool = True
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    strip_header_prefixes: tuple[str, ...] = ()
    websocket_query_token: str | None = "__clerk_token"
    websocket_close_on_expiry: bool = True
    websocket_max_message_bytes: int = 4 * 1024 * 1024
    client: str = "lean"  # plain http:// requests: "lean" (llhttp pool) or "aiohttp"
    fast_path: bool = True  # the proxy's fast door (http/fast_proxy.py) when every upstream is lean


def parse_token_sources(reader: Reader) -> tuple[TokenSource, ...]:
    """Read `token_sources` (the defaults when absent)."""
    if not reader.has("token_sources"):
        return DEFAULT_TOKEN_SOURCES
    sources: list[TokenSource] = []
    for item in reader.children("token_sources"):
        kinds = [k for k in ("header", "cookie", "query") if item.has(k)]
        if len(kinds) != 1:
            item.problem("must name exactly one of header, cookie, query")
            continue
        kind = kinds[0]
        name = item.text(kind, required=True) or ""
        scheme = item.text("scheme") if kind == "header" else None
        if kind == "header":
            item.header_name(kind, name)
        sources.append(TokenSource(kind, name, scheme))
        item.check_unknown()
    if not sources:
        reader.problem("must list at least one source", "token_sources")
    return tuple(sources) or DEFAULT_TOKEN_SOURCES


def parse_identity_headers(reader: Reader) -> dict[str, str]:
    """Read `identity_headers` over the defaults."""
    headers = dict(DEFAULT_IDENTITY_HEADERS)
    mapping = reader.child("identity_headers")
    for name in IDENTITY_FIELDS:
        if name not in mapping.data:
            mapping.raw(name)
            continue
        value = mapping.data[name]
        mapping.raw(name)
        if value is None or value is False or value == "":
            headers.pop(name, None)
        elif isinstance(value, str) and mapping.header_name(name, value):
            headers[name] = value
        elif not isinstance(value, str):
            mapping.problem("must be a header name, or null to send none", name)
    mapping.check_unknown()
    seen: dict[str, str] = {}
    for name, header in headers.items():
        if header.lower() in seen:
            mapping.problem(f"{header} is already used by {seen[header.lower()]}", name)
        seen[header.lower()] = name
    return headers


def parse_proxy(reader: Reader) -> ProxySettings:
    """Read the `proxy` section."""
    d = ProxySettings()
    trusted = parse_networks(reader, "trusted_proxies")
    prefixes = reader.str_list("strip_header_prefixes")
    for prefix in prefixes:
        reader.header_name("strip_header_prefixes", prefix)
    query = reader.raw("websocket_query_token", d.websocket_query_token)
    if reader.data.get("websocket_query_token", "?") in (None, False, ""):
        query = None  # explicitly off: tokens only from headers and cookies
    elif query is not None and not isinstance(query, str):
        reader.problem("must be a query parameter name, or null for none",
                       "websocket_query_token")
        query = d.websocket_query_token
    proxy = ProxySettings(
        connect_timeout_seconds=reader.number(
            "connect_timeout_seconds", d.connect_timeout_seconds, minimum=0.01, maximum=600),
        read_timeout_seconds=reader.number(
            "read_timeout_seconds", d.read_timeout_seconds, minimum=0.01, maximum=86400),
        max_body_bytes=reader.integer("max_body_bytes", d.max_body_bytes, minimum=0),
        max_connections=reader.integer(
            "max_connections", d.max_connections, minimum=1, maximum=100_000),
        max_connections_per_upstream=reader.integer(
            "max_connections_per_upstream", d.max_connections_per_upstream,
            minimum=1, maximum=100_000),
        keepalive_seconds=reader.number(
            "keepalive_seconds", d.keepalive_seconds, minimum=0.1, maximum=3600),
        preserve_host=reader.flag("preserve_host", d.preserve_host),
        forward_authorization=reader.flag("forward_authorization", d.forward_authorization),
        forward_cookies=reader.flag("forward_cookies", d.forward_cookies),
        trusted_proxies=trusted,
        strip_header_prefixes=prefixes,
        websocket_query_token=query,
        websocket_close_on_expiry=reader.flag(
            "websocket_close_on_expiry", d.websocket_close_on_expiry),
        websocket_max_message_bytes=reader.integer(
            "websocket_max_message_bytes", d.websocket_max_message_bytes,
            minimum=1024, maximum=1024**3),
        client=reader.choice("client", d.client, ("lean", "aiohttp")),
        fast_path=reader.flag("fast_path", d.fast_path),
    )
    reader.check_unknown()
    return proxy


def parse_revocation(
    reader: Reader, env: Mapping[str, str], issuers: list[IssuerSettings], leeway: float,
    api_url: str,
) -> RevocationSettings:
    """Read the `revocation` section."""
    d = RevocationSettings()
    # Entries must outlive every token that could still be presented: at least an hour, and
    # longer when an issuer declares a longer maximum token lifetime.
    longest = max((i.max_token_lifetime or 0.0 for i in issuers), default=0.0) + leeway
    default_ttl = max(d.entry_ttl_seconds, longest)
    entry_ttl = reader.number("entry_ttl_seconds", default_ttl, minimum=60, maximum=90 * 86400)
    if entry_ttl < longest:
        reader.problem(f"must be at least the longest token lifetime plus leeway ({longest:g})",
                       "entry_ttl_seconds")
    prefix = reader.text("key_prefix", d.key_prefix) or d.key_prefix
    if not all(c.isalnum() or c in "-_.:" for c in prefix):
        reader.problem("may hold letters, digits and - _ . : only", "key_prefix")
    settings = RevocationSettings(
        entry_ttl_seconds=entry_ttl,
        local_ttl_seconds=reader.number(
            "local_ttl_seconds", d.local_ttl_seconds, minimum=0.05, maximum=60),
        store_timeout_seconds=reader.number(
            "store_timeout_seconds", d.store_timeout_seconds, minimum=0.01, maximum=30),
        store_retry_seconds=reader.number(
            "store_retry_seconds", d.store_retry_seconds, minimum=0.05, maximum=60),
        store_grace_seconds=reader.number(
            "store_grace_seconds", d.store_grace_seconds, minimum=0, maximum=3600),
        on_store_error=reader.choice("on_store_error", d.on_store_error, FAILURE_MODES),
        key_prefix=prefix,
        webhook_max_body_bytes=reader.integer(
            "webhook_max_body_bytes", d.webhook_max_body_bytes, minimum=1024,
            maximum=16 * 1024**2),
        introspection=reader.flag("introspection", d.introspection),
        introspection_ttl_seconds=reader.number(
            "introspection_ttl_seconds", d.introspection_ttl_seconds, minimum=0.1, maximum=3600),
        introspection_grace_seconds=reader.number(
            "introspection_grace_seconds", d.introspection_grace_seconds, minimum=0,
            maximum=86400),
        introspection_failure_mode=reader.choice(
            "introspection_failure_mode", d.introspection_failure_mode, FAILURE_MODES),
        introspection_timeout_seconds=reader.number(
            "introspection_timeout_seconds", d.introspection_timeout_seconds, minimum=0.1,
            maximum=60),
        introspection_cache_size=reader.integer(
            "introspection_cache_size", d.introspection_cache_size, minimum=1,
            maximum=10_000_000),
    )
    if settings.introspection:
        if not env.get("CLERK_SECRET_KEY"):
            reader.problem("needs CLERK_SECRET_KEY", "introspection")
        if check_key_url(api_url):
            reader.problem(check_key_url(api_url) or "", "introspection")
    redis_url = env.get("GATEWAY_REDIS_URL")
    if redis_url and not redis_url.startswith(("redis://", "rediss://")):
        reader.problems.append("GATEWAY_REDIS_URL: must be a redis:// or rediss:// URL")
    reader.check_unknown()
    return settings


def address_in(address: str | None, networks: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    """True when the address lies in one of the networks (False when it is no address)."""
    try:
        ip = ip_address(address or "")
    except ValueError:
        return False
    return any(ip in network for network in networks)


def parse_networks(reader: Reader, key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """A list of CIDR networks (a bare address is a /32 or /128)."""
    networks = []
    for text in reader.str_list(key):
        try:
            networks.append(ip_network(text, strict=False))
        except ValueError:
            reader.problem(f"{text!r} is not an IP network", key)
    return tuple(networks)


def parse_forward_auth(reader: Reader) -> ForwardAuthSettings:
    """Read the `forward_auth` section."""
    prefix = (reader.text("path_prefix", "") or "").rstrip("/")
    if prefix and not prefix.startswith("/"):
        reader.problem(f"{prefix!r} must start with /", "path_prefix")
        prefix = ""
    source = reader.choice("uri_source", "auto", ("auto", "forwarded", "original"))
    settings = ForwardAuthSettings(parse_networks(reader, "trusted_callers"), prefix, source,
                                   reader.flag("fast_path", True))
    reader.check_unknown()
    return settings


@dataclass(frozen=True)
class LimitSettings:
    """Caps on what one client may send before any decision is made."""

    header_timeout_seconds: float = 10.0
    max_header_bytes: int = 8190
    max_headers: int = 100


def parse_limits(reader: Reader) -> LimitSettings:
    """Read the `limits` section."""
    d = LimitSettings()
    limits = LimitSettings(
        header_timeout_seconds=reader.number(
            "header_timeout_seconds", d.header_timeout_seconds, minimum=0, maximum=600),
        max_header_bytes=reader.integer(
            "max_header_bytes", d.max_header_bytes, minimum=1024, maximum=65536),
        max_headers=reader.integer("max_headers", d.max_headers, minimum=16, maximum=1000),
    )
    reader.check_unknown()
    return limits
