"""Settings sections: token sources, identity headers, proxy, revocation, forward-auth."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

from gateway.config_issuers import IssuerSettings
from gateway.configreader import Reader, check_key_url
from gateway.numbers import whole_number

__all__ = [
    "DEFAULT_HASURA_VARIABLES",
    "DEFAULT_IDENTITY_HEADERS",
    "DEFAULT_TOKEN_SOURCES",
    "FAILURE_MODES",
    "HASURA_ROLE_VARIABLE",
    "IDENTITY_FIELDS",
    "ForwardAuthSettings",
    "HasuraSettings",
    "LimitSettings",
    "ProxySettings",
    "RevocationSettings",
    "TokenSource",
    "address_in",
    "parse_forward_auth",
    "parse_hasura",
    "parse_identity_headers",
    "parse_limits",
    "parse_networks",
    "parse_proxy",
    "parse_revocation",
    "parse_token_sources",
]

IDENTITY_FIELDS: tuple[str, ...] = (
    "user_id", "org_id", "org_role", "org_slug", "org_permissions", "session_id",
    "plan", "features", "actor_id", "issuer", "token_id", "roles",
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
    "token_type": "X-Token-Type",
    "scopes": "X-Scopes",
    "machine_id": "X-Machine-Id",
}
# The presented credential's type and what machine credentials carry (issue 14).
IDENTITY_FIELDS = (*IDENTITY_FIELDS, "token_type", "scopes", "machine_id")


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
    # The longest any accepted token stays acceptable (longest issuer maximum + twice the
    # leeway): every entry is kept at least this long, whatever its ttl (make_entry).
    horizon_seconds: float = 86400.0 + 10.0


@dataclass(frozen=True)
class ForwardAuthSettings:
    """How forward-auth callers are trusted and how Envoy's path prefix is removed."""

    trusted_callers: tuple[IPv4Network | IPv6Network, ...] = ()
    path_prefix: str = ""
    uri_source: str = "auto"
    fast_path: bool = True  # repeat decisions answered by the fast door (http/fast_door.py)


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
    body_idle_timeout_seconds: float = 30.0  # a request body making no progress is cut
    write_timeout_seconds: float = 60.0  # a client not reading the response is cut
    pool_timeout_seconds: float = 10.0  # waiting for a free upstream connection: then 503
    max_requests_per_client: int = 64  # proxied requests in flight per client; 0: no cap
    websocket_max_connections: int = 1024  # relayed WebSockets, on their own connector
    websocket_max_per_client: int = 32  # relayed WebSockets per client; 0: no cap
    websocket_idle_timeout_seconds: float = 300.0  # no frame either way: closed with 1001
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
        body_idle_timeout_seconds=reader.number(
            "body_idle_timeout_seconds", d.body_idle_timeout_seconds, minimum=0.1, maximum=3600),
        write_timeout_seconds=reader.number(
            "write_timeout_seconds", d.write_timeout_seconds, minimum=0.1, maximum=3600),
        pool_timeout_seconds=reader.number(
            "pool_timeout_seconds", d.pool_timeout_seconds, minimum=0.01, maximum=600),
        max_requests_per_client=reader.integer(
            "max_requests_per_client", d.max_requests_per_client, minimum=0, maximum=100_000),
        websocket_max_connections=reader.integer(
            "websocket_max_connections", d.websocket_max_connections, minimum=1,
            maximum=1_000_000),
        websocket_max_per_client=reader.integer(
            "websocket_max_per_client", d.websocket_max_per_client, minimum=0,
            maximum=1_000_000),
        websocket_idle_timeout_seconds=reader.number(
            "websocket_idle_timeout_seconds", d.websocket_idle_timeout_seconds, minimum=0.1,
            maximum=86400),
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
    # iat may be up to one leeway ahead of the clock, exp is accepted one leeway late.
    horizon = max((i.effective_max_lifetime for i in issuers), default=0.0) + 2 * leeway
    settings = RevocationSettings(
        horizon_seconds=horizon,
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
    elif redis_url:
        reader.problems += redis_url_problems(redis_url)
    reader.check_unknown()
    return settings


def redis_url_problems(url: str) -> list[str]:
    """What is wrong with a Redis URL's port and database (never echoing the URL: a secret)."""
    problems = []
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises for a port that is not 0-65535
    except ValueError:
        problems.append("GATEWAY_REDIS_URL: the port must be a number from 0 to 65535")
    if whole_number((parts.path or "/0").lstrip("/") or "0", 5) is None:
        problems.append("GATEWAY_REDIS_URL: the database after / must be a number")
    return problems


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
    keepalive_timeout_seconds: float = 75.0  # an idle keep-alive connection closes (both listeners)
    unauthenticated_body_timeout_seconds: float = 10.0  # a webhook body not whole in time: 408
    unauthenticated_body_memory_bytes: int = 32 * 1024**2  # such bodies held at once, per process
    max_path_escapes: int = 256
    max_path_segments: int = 256


def parse_limits(reader: Reader) -> LimitSettings:
    """Read the `limits` section."""
    d = LimitSettings()
    limits = LimitSettings(
        header_timeout_seconds=reader.number(
            "header_timeout_seconds", d.header_timeout_seconds, minimum=0, maximum=600),
        max_header_bytes=reader.integer(
            "max_header_bytes", d.max_header_bytes, minimum=1024, maximum=65536),
        max_headers=reader.integer("max_headers", d.max_headers, minimum=16, maximum=1000),
        keepalive_timeout_seconds=reader.number(
            "keepalive_timeout_seconds", d.keepalive_timeout_seconds, minimum=0.1, maximum=3600),
        unauthenticated_body_timeout_seconds=reader.number(
            "unauthenticated_body_timeout_seconds", d.unauthenticated_body_timeout_seconds,
            minimum=0.1, maximum=600),
        unauthenticated_body_memory_bytes=reader.integer(
            "unauthenticated_body_memory_bytes", d.unauthenticated_body_memory_bytes,
            minimum=64 * 1024, maximum=16 * 1024**3),
        max_path_escapes=reader.integer(
            "max_path_escapes", d.max_path_escapes, minimum=16, maximum=8192),
        max_path_segments=reader.integer(
            "max_path_segments", d.max_path_segments, minimum=16, maximum=8192),
    )
    reader.check_unknown()
    return limits


HASURA_ROLE_VARIABLE = "X-Hasura-Role"
DEFAULT_HASURA_VARIABLES: Mapping[str, str] = {
    "X-Hasura-User-Id": "user_id",
    "X-Hasura-Org-Id": "org_id",
}


@dataclass(frozen=True)
class HasuraSettings:
    """Hasura / PromptQL auth-webhook mode at /_gateway/hasura (YAML `hasura:`)."""

    enabled: bool = False
    path: str = "/v1/graphql"
    default_role: str = "user"
    anonymous_role: str | None = None
    variables: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_HASURA_VARIABLES))
    max_cache_seconds: int = 10
    cache_control_in_body: bool = True
    max_body_bytes: int = 1024**2


def _hasura_role(reader: Reader, key: str, default: str | None) -> str | None:
    role = reader.text(key, default)
    if role is not None and (not role or not role.isascii() or not role.isprintable()
                             or "," in role or " " in role):
        reader.problem("must be a Hasura role name (printable ASCII, no spaces or commas)", key)
        return default
    return role


def _hasura_variables(reader: Reader) -> dict[str, str]:
    mapping = reader.child("variables")
    if not reader.has("variables"):
        return dict(DEFAULT_HASURA_VARIABLES)
    variables: dict[str, str] = {}
    for name in list(mapping.data):
        value = mapping.raw(name)
        if not isinstance(name, str) or not name.lower().startswith("x-hasura-"):
            mapping.problem("session variables are named X-Hasura-<name>", str(name))
        elif not mapping.header_name(name, name):
            continue
        elif name.lower() == HASURA_ROLE_VARIABLE.lower():
            mapping.problem("X-Hasura-Role is chosen by the gateway, not mapped", name)
        elif value not in IDENTITY_FIELDS:
            mapping.problem(f"must be an identity field ({', '.join(IDENTITY_FIELDS)})", name)
        else:
            variables[name] = value
    mapping.check_unknown()
    return variables


def parse_hasura(reader: Reader) -> HasuraSettings:
    """Read the `hasura` section."""
    d = HasuraSettings()
    path = reader.text("path", d.path) or d.path
    if not path.startswith("/"):
        reader.problem("must be a path starting with /", "path")
        path = d.path
    settings = HasuraSettings(
        enabled=reader.flag("enabled", d.enabled),
        path=path,
        default_role=_hasura_role(reader, "default_role", d.default_role) or d.default_role,
        anonymous_role=_hasura_role(reader, "anonymous_role", None),
        variables=_hasura_variables(reader),
        max_cache_seconds=reader.integer(
            "max_cache_seconds", d.max_cache_seconds, minimum=0, maximum=86400),
        cache_control_in_body=reader.flag("cache_control_in_body", d.cache_control_in_body),
        max_body_bytes=reader.integer(
            "max_body_bytes", d.max_body_bytes, minimum=1024, maximum=64 * 1024**2),
    )
    reader.check_unknown()
    return settings
