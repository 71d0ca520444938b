"""Typed, frozen settings loaded from the environment and an optional YAML file.

Validation runs in one pass with no I/O beyond reading the files it is pointed at, and
reports every problem at once (``ConfigError``). The environment overrides the file.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import yaml

from gateway.configreader import Reader, check_key_url
from gateway.routing import Route, RouteOptions, parse_route_options, parse_routes

__all__ = [
    "ALLOWED_ALGORITHMS",
    "IDENTITY_FIELDS",
    "ClaimPaths",
    "ConfigError",
    "ForwardAuthSettings",
    "IssuerSettings",
    "KeySettings",
    "Listen",
    "ProxySettings",
    "RevocationSettings",
    "Secret",
    "Settings",
    "TokenSource",
    "issuer_from_publishable_key",
    "load_settings",
]

ALLOWED_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
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
DEFAULT_API_URL = "https://api.clerk.com"


class ConfigError(Exception):
    """Invalid configuration: carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def __str__(self) -> str:
        return "invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)


@dataclass(frozen=True)
class Secret:
    """A secret string that never shows itself in repr or str."""

    value: str

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class Listen:
    """A host and port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ClaimPaths:
    """JSON pointers locating identity fields in a plain OIDC token."""

    user_id: str = "/sub"
    session_id: str | None = "/sid"
    org_id: str | None = None
    org_slug: str | None = None
    org_role: str | None = None
    org_permissions: str | None = None
    plan: str | None = None
    features: str | None = None
    actor_id: str | None = "/act/sub"


@dataclass(frozen=True)
class IssuerSettings:
    """One trusted token issuer and how its keys are obtained."""

    name: str
    issuer: str
    preset: str = "clerk"
    jwks_url: str | None = None
    jwt_key: str | None = None
    discovery: bool = False
    backend_api_url: str | None = None
    secret_key: Secret | None = None
    audiences: tuple[str, ...] = ()
    authorized_parties: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256",)
    claims: ClaimPaths = field(default_factory=ClaimPaths)
    accept_pending_sessions: bool = False
    max_token_lifetime: float | None = None

    @property
    def key_source(self) -> str:
        """Which of pem, jwks, discovery or backend_api supplies the keys."""
        if self.jwt_key:
            return "pem"
        if self.discovery:
            return "discovery"
        if self.backend_api_url:
            return "backend_api"
        return "jwks"


@dataclass(frozen=True)
class KeySettings:
    """How key sets are fetched and refreshed."""

    refresh_seconds: float = 300.0
    min_refresh_seconds: float = 30.0
    max_refresh_seconds: float = 86400.0
    unknown_kid_cooldown_seconds: float = 30.0
    fetch_timeout_seconds: float = 5.0
    retry_min_seconds: float = 1.0
    retry_max_seconds: float = 60.0


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

    def trusts(self, address: str | None) -> bool:
        """True when this caller may say which request it forwards (all, when none listed)."""
        if not self.trusted_callers:
            return True
        try:
            ip = ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_callers)


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
    max_body_bytes: int = 0  # 0 = unlimited
    max_connections: int = 256
    max_connections_per_upstream: int = 128
    keepalive_seconds: float = 30.0
    preserve_host: bool = True
    forward_authorization: bool = True
    forward_cookies: bool = True
    trusted_proxies: tuple[str, ...] = ()
    strip_header_prefixes: tuple[str, ...] = ()
    websocket_query_token: str | None = "__clerk_token"
    websocket_close_on_expiry: bool = True
    websocket_max_message_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to run, validated."""

    issuers: tuple[IssuerSettings, ...]
    listen: Listen = Listen("0.0.0.0", 8080)
    admin_listen: Listen = Listen("127.0.0.1", 9090)
    upstream: str | None = None
    realm: str = "clerk-gateway"
    leeway_seconds: float = 5.0
    max_token_bytes: int = 8192
    token_cache_size: int = 100_000
    keys: KeySettings = field(default_factory=KeySettings)
    token_sources: tuple[TokenSource, ...] = DEFAULT_TOKEN_SOURCES
    identity_headers: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_IDENTITY_HEADERS)
    )
    routes: tuple[Route, ...] = ()
    forward_auth: ForwardAuthSettings = field(default_factory=ForwardAuthSettings)
    route_options: RouteOptions = field(default_factory=RouteOptions)
    workers: int = 0  # 0 = one per CPU
    proxy: ProxySettings = field(default_factory=ProxySettings)
    shutdown_timeout_seconds: float = 30.0
    log_level: str = "INFO"
    log_format: str = "json"
    admin_token: Secret | None = None
    redis_url: Secret | None = None
    webhook_secret: Secret | None = None
    clerk_secret_key: Secret | None = None
    clerk_api_url: str = DEFAULT_API_URL
    revocation: RevocationSettings = field(default_factory=RevocationSettings)
    source_path: str | None = None

    @property
    def mode(self) -> str:
        """`proxy` when an upstream is configured, else `forward_auth`."""
        return "proxy" if self.upstream else "forward_auth"


def issuer_from_publishable_key(key: str) -> str:
    """Derive the Frontend API issuer from a Clerk publishable key (pk_test_/pk_live_)."""
    for prefix in ("pk_test_", "pk_live_"):
        if key.startswith(prefix):
            encoded = key[len(prefix):]
            break
    else:
        raise ValueError("must start with pk_test_ or pk_live_")
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("is not valid base64") from exc
    if not decoded.endswith("$") or len(decoded) < 2 or "/" in decoded:
        raise ValueError("does not encode a Frontend API host")
    return f"https://{decoded[:-1]}"


def _parse_listen(value: str, where: str, problems: list[str]) -> Listen | None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.append(f"{where}: {value!r} must be host:port")
        return None
    return Listen(host.strip("[]") or "0.0.0.0", int(port))


def _read_yaml(path: str, problems: list[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"config file {path}: cannot be read ({exc.strerror})")
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problems.append(f"config file {path}: not valid YAML{where}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"config file {path}: must hold a mapping at the top level")
        return {}
    return data


def _env_issuer_overrides(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """The `clerk` issuer's settings that come from the environment."""
    out: dict[str, Any] = {}
    if env.get("CLERK_ISSUER"):
        out["issuer"] = env["CLERK_ISSUER"].strip()
    elif env.get("CLERK_PUBLISHABLE_KEY"):
        try:
            out["issuer"] = issuer_from_publishable_key(env["CLERK_PUBLISHABLE_KEY"].strip())
        except ValueError as exc:
            problems.append(f"CLERK_PUBLISHABLE_KEY: {exc}")
    if env.get("CLERK_JWKS_URL"):
        out["jwks_url"] = env["CLERK_JWKS_URL"].strip()
    if env.get("CLERK_JWT_KEY"):
        out["jwt_key"] = env["CLERK_JWT_KEY"].replace("\\n", "\n")
    if env.get("CLERK_AUTHORIZED_PARTIES"):
        out["authorized_parties"] = env["CLERK_AUTHORIZED_PARTIES"]
    return out


def _parse_claim_paths(reader: Reader) -> ClaimPaths:
    defaults = ClaimPaths()
    values: dict[str, str | None] = {}
    for name in ClaimPaths.__dataclass_fields__:
        pointer = reader.text(name, getattr(defaults, name))
        if pointer is not None and not pointer.startswith("/"):
            reader.problem(f"{pointer!r} must be a JSON pointer starting with /", name)
            pointer = getattr(defaults, name)
        values[name] = pointer
    reader.check_unknown()
    return ClaimPaths(**values)  # type: ignore[arg-type]


def _parse_issuer(reader: Reader, env: Mapping[str, str], api_url: str) -> IssuerSettings | None:
    name = reader.text("name", required=True) or "?"
    issuer = reader.text("issuer", required=True)
    preset = reader.choice("preset", "clerk", ("clerk", "oidc"))
    jwks_url = reader.text("jwks_url")
    jwt_key = reader.text("jwt_key")
    key_file = reader.text("jwt_key_file")
    discovery = reader.flag("discovery", preset == "oidc" and not (jwks_url or jwt_key or key_file))
    backend_api = reader.flag("backend_api", False)
    if key_file:
        try:
            jwt_key = Path(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            reader.problem(f"cannot read {key_file} ({exc.strerror})", "jwt_key_file")
    sources = [s for s, on in (("jwks_url", jwks_url), ("jwt_key", jwt_key),
                               ("discovery", discovery), ("backend_api", backend_api)) if on]
    if len(sources) > 1:
        reader.problem(f"choose one key source, got {', '.join(sources)}")
    if jwt_key and "-----BEGIN PUBLIC KEY-----" not in jwt_key:
        reader.problem("must be a PEM public key (-----BEGIN PUBLIC KEY-----)", "jwt_key")
    if issuer and check_key_url(issuer) and not jwt_key:
        reader.problem(check_key_url(issuer) or "", "issuer")
    if jwks_url and check_key_url(jwks_url):
        reader.problem(check_key_url(jwks_url) or "", "jwks_url")
    secret = env.get("CLERK_SECRET_KEY")
    if backend_api and not secret:
        reader.problem("backend_api needs CLERK_SECRET_KEY", "backend_api")
    if backend_api and check_key_url(api_url):
        reader.problem(check_key_url(api_url) or "", "backend_api")
    algorithms = reader.str_list("algorithms", ("RS256",))
    for alg in algorithms:
        if alg not in ALLOWED_ALGORITHMS:
            reader.problem(
                f"{alg!r} is not allowed (asymmetric algorithms only: "
                f"{', '.join(ALLOWED_ALGORITHMS)})", "algorithms")
    if not algorithms:
        reader.problem("must name at least one algorithm", "algorithms")
    max_lifetime = reader.number("max_token_lifetime_seconds", 0, minimum=0)
    settings = IssuerSettings(
        name=name,
        issuer=issuer or "",
        preset=preset,
        jwks_url=jwks_url,
        jwt_key=jwt_key,
        discovery=discovery,
        backend_api_url=api_url if backend_api else None,
        secret_key=Secret(secret) if backend_api and secret else None,
        audiences=reader.str_list("audiences"),
        authorized_parties=reader.str_list("authorized_parties"),
        algorithms=algorithms or ("RS256",),
        claims=_parse_claim_paths(reader.child("claims")),
        accept_pending_sessions=reader.flag("accept_pending_sessions", False),
        max_token_lifetime=max_lifetime or None,
    )
    reader.check_unknown()
    return settings if issuer else None


def _parse_token_sources(reader: Reader) -> tuple[TokenSource, ...]:
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


def _parse_identity_headers(reader: Reader) -> dict[str, str]:
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


def _parse_proxy(reader: Reader) -> ProxySettings:
    d = ProxySettings()
    trusted = reader.str_list("trusted_proxies")
    for cidr in trusted:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            reader.problem(f"{cidr!r} is not an IP address or CIDR network", "trusted_proxies")
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
    )
    reader.check_unknown()
    return proxy


def _parse_keys(reader: Reader) -> KeySettings:
    d = KeySettings()
    keys = KeySettings(
        refresh_seconds=reader.number("refresh_seconds", d.refresh_seconds, minimum=1),
        min_refresh_seconds=reader.number("min_refresh_seconds", d.min_refresh_seconds, minimum=1),
        max_refresh_seconds=reader.number("max_refresh_seconds", d.max_refresh_seconds, minimum=1),
        unknown_kid_cooldown_seconds=reader.number(
            "unknown_kid_cooldown_seconds", d.unknown_kid_cooldown_seconds, minimum=0),
        fetch_timeout_seconds=reader.number(
            "fetch_timeout_seconds", d.fetch_timeout_seconds, minimum=0.1, maximum=120),
        retry_min_seconds=reader.number("retry_min_seconds", d.retry_min_seconds, minimum=0.01),
        retry_max_seconds=reader.number("retry_max_seconds", d.retry_max_seconds, minimum=0.01),
    )
    if keys.min_refresh_seconds > keys.max_refresh_seconds:
        reader.problem("min_refresh_seconds must not exceed max_refresh_seconds")
    reader.check_unknown()
    return keys


def _parse_revocation(
    reader: Reader, env: Mapping[str, str], issuers: list[IssuerSettings], leeway: float,
    api_url: str,
) -> RevocationSettings:
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


def parse_networks(reader: Reader, key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """A list of CIDR networks (a bare address is a /32 or /128)."""
    networks = []
    for text in reader.str_list(key):
        try:
            networks.append(ip_network(text, strict=False))
        except ValueError:
            reader.problem(f"{text!r} is not an IP network", key)
    return tuple(networks)


def _parse_forward_auth(reader: Reader) -> ForwardAuthSettings:
    prefix = (reader.text("path_prefix", "") or "").rstrip("/")
    if prefix and not prefix.startswith("/"):
        reader.problem(f"{prefix!r} must start with /", "path_prefix")
        prefix = ""
    source = reader.choice("uri_source", "auto", ("auto", "forwarded", "original"))
    settings = ForwardAuthSettings(parse_networks(reader, "trusted_callers"), prefix, source)
    reader.check_unknown()
    return settings


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> Settings:
    """Build settings from the environment and an optional YAML file; raise ConfigError."""
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    path = config_path or env.get("GATEWAY_CONFIG") or None
    data = _read_yaml(path, problems) if path else {}
    root = Reader(data, "", problems)

    api_url = (env.get("CLERK_API_URL") or DEFAULT_API_URL).rstrip("/")
    issuer_readers = root.children("issuers")
    overrides = _env_issuer_overrides(env, problems)
    env_secret = env.get("CLERK_SECRET_KEY")
    clerk_reader = next((r for r in issuer_readers if r.data.get("name") == "clerk"), None)
    if overrides or (env_secret and clerk_reader is None and not issuer_readers):
        merged = dict(clerk_reader.data if clerk_reader else {"name": "clerk"})
        merged.update(overrides)
        if env_secret and not any(merged.get(k) for k in ("jwks_url", "jwt_key", "discovery")):
            merged["backend_api"] = True
        if "jwt_key" in overrides or "jwks_url" in overrides:
            merged.pop("jwks_url" if "jwt_key" in overrides else "jwt_key", None)
            merged.pop("backend_api", None)
        label = "issuers[clerk] (from the environment)"
        replacement = Reader(merged, label, problems)
        if clerk_reader is None:
            issuer_readers.append(replacement)
        else:
            issuer_readers[issuer_readers.index(clerk_reader)] = replacement
    issuers = [i for i in (_parse_issuer(r, env, api_url) for r in issuer_readers) if i]
    if not issuer_readers:
        problems.append(
            "no issuer configured: set CLERK_PUBLISHABLE_KEY, CLERK_ISSUER or CLERK_JWT_KEY, "
            "or declare issuers in the config file")
    names = [i.name for i in issuers]
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(f"issuers: name {name!r} is used more than once")
    urls = [i.issuer for i in issuers]
    for url in {u for u in urls if urls.count(u) > 1}:
        problems.append(f"issuers: issuer {url!r} is declared more than once")

    file_listen = root.text("listen", "0.0.0.0:8080") or ""
    file_admin_listen = root.text("admin_listen", "127.0.0.1:9090") or ""
    file_upstream = root.text("upstream")
    listen = _parse_listen(env.get("GATEWAY_LISTEN") or file_listen, "listen", problems)
    admin_listen = _parse_listen(
        env.get("GATEWAY_ADMIN_LISTEN") or file_admin_listen, "admin_listen", problems)
    upstream = env.get("GATEWAY_UPSTREAM") or file_upstream
    if upstream and not upstream.startswith(("http://", "https://")):
        problems.append(f"upstream: {upstream!r} must be an http:// or https:// URL")

    verification = root.child("verification")
    leeway = verification.number("leeway_seconds", 5.0, minimum=0, maximum=300)
    max_token_bytes = verification.integer("max_token_bytes", 8192, minimum=256, maximum=65536)
    cache_size = verification.integer("token_cache_size", 100_000, minimum=0, maximum=10_000_000)
    verification.check_unknown()

    logging_reader = root.child("logging")
    file_level = logging_reader.text("level", "INFO") or ""
    log_level = (env.get("GATEWAY_LOG_LEVEL") or file_level).upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        problems.append(f"log level: {log_level!r} must be DEBUG, INFO, WARNING or ERROR")
    file_format = logging_reader.text("format", "json") or ""
    log_format = (env.get("GATEWAY_LOG_FORMAT") or file_format).lower()
    if log_format not in {"json", "text"}:
        problems.append(f"log format: {log_format!r} must be json or text")
    logging_reader.check_unknown()

    workers_text = env.get("GATEWAY_WORKERS")
    workers = root.integer("workers", 0, minimum=0, maximum=256)
    if workers_text:
        if workers_text.isdigit() and 0 <= int(workers_text) <= 256:
            workers = int(workers_text)
        else:
            problems.append(f"GATEWAY_WORKERS: {workers_text!r} must be a number from 0 to 256")
    shutdown_timeout = root.number("shutdown_timeout_seconds", 30.0, minimum=0, maximum=3600)
    shutdown_text = env.get("GATEWAY_SHUTDOWN_TIMEOUT")
    if shutdown_text:
        try:
            shutdown_timeout = float(shutdown_text)
            if not 0 <= shutdown_timeout <= 3600:
                raise ValueError(shutdown_text)
        except ValueError:
            problems.append(
                f"GATEWAY_SHUTDOWN_TIMEOUT: {shutdown_text!r} must be seconds from 0 to 3600")
            shutdown_timeout = 30.0
    proxy = _parse_proxy(root.child("proxy"))

    realm = root.text("realm", "clerk-gateway") or "clerk-gateway"
    if '"' in realm or "\\" in realm:
        problems.append("realm: must not contain quotes or backslashes")
    keys = _parse_keys(root.child("keys"))
    token_sources = _parse_token_sources(root)
    identity_headers = _parse_identity_headers(root)
    route_options = parse_route_options(root)
    routes = parse_routes(
        root, problems, {i.name: i.issuer for i in issuers}, route_options)
    revocation = _parse_revocation(root.child("revocation"), env, issuers, leeway, api_url)
    forward_auth = _parse_forward_auth(root.child("forward_auth"))
    for route in routes:
        if route.upstream and not route.upstream.startswith(("http://", "https://")):
            problems.append(
                f"routes[{route.name}].upstream: {route.upstream!r} must be an http:// or "
                "https:// URL")
        elif route.upstream and not upstream:
            problems.append(
                f"routes[{route.name}].upstream: needs a default upstream (GATEWAY_UPSTREAM or "
                "upstream:) so the gateway runs as a proxy")

    def secret(name: str) -> Secret | None:
        value = env.get(name)
        return Secret(value) if value else None

    root.check_unknown()
    if problems:
        raise ConfigError(problems)
    assert listen and admin_listen
    return Settings(
        issuers=tuple(issuers),
        listen=listen,
        admin_listen=admin_listen,
        upstream=upstream.rstrip("/") if upstream else None,
        realm=realm,
        leeway_seconds=leeway,
        max_token_bytes=max_token_bytes,
        token_cache_size=cache_size,
        keys=keys,
        token_sources=token_sources,
        identity_headers=identity_headers,
        routes=tuple(routes),
        forward_auth=forward_auth,
        route_options=route_options,
        workers=workers,
        proxy=proxy,
        shutdown_timeout_seconds=shutdown_timeout,
        log_level=log_level,
        log_format=log_format,
        admin_token=secret("GATEWAY_ADMIN_TOKEN"),
        redis_url=secret("GATEWAY_REDIS_URL"),
        webhook_secret=secret("CLERK_WEBHOOK_SIGNING_SECRET"),
        clerk_secret_key=secret("CLERK_SECRET_KEY"),
        clerk_api_url=api_url,
        revocation=revocation,
        source_path=path,
    )
