"""Typed, frozen settings loaded from the environment and an optional YAML file.

Validation runs in one pass with no I/O beyond reading the files it is pointed at, and
reports every problem at once (``ConfigError``). The environment overrides the file.
The sections live in `config_issuers` and `config_sections`; this module assembles them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config_assertion import AssertionSettings, parse_assertion
from gateway.config_issuers import (
    ALLOWED_ALGORITHMS,
    DEFAULT_API_URL,
    ClaimPaths,
    IssuerSettings,
    KeySettings,
    env_issuer_overrides,
    issuer_from_publishable_key,
    parse_issuer,
    parse_keys,
)
from gateway.config_machine import (
    DEFAULT_TOKEN_TYPES,
    MachineTokenSettings,
    check_accepts,
    parse_machine_tokens,
    parse_token_types,
)
from gateway.config_sections import (
    DEFAULT_IDENTITY_HEADERS,
    DEFAULT_TOKEN_SOURCES,
    IDENTITY_FIELDS,
    ForwardAuthSettings,
    HasuraSettings,
    LimitSettings,
    ProxySettings,
    RevocationSettings,
    TokenSource,
    parse_forward_auth,
    parse_hasura,
    parse_identity_headers,
    parse_limits,
    parse_proxy,
    parse_revocation,
    parse_token_sources,
)
from gateway.configreader import Reader, Secret
from gateway.cors import CorsSettings, parse_cors
from gateway.loops import loop_problem
from gateway.numbers import whole_number
from gateway.routing import Route, RouteOptions, parse_route_options, parse_routes
from gateway.state.schema import default_state_dir
from gateway.state.settings import parse_state

__all__ = [
    "ALLOWED_ALGORITHMS",
    "DEFAULT_TOKEN_SOURCES",
    "IDENTITY_FIELDS",
    "AssertionSettings",
    "ClaimPaths",
    "ConfigError",
    "ForwardAuthSettings",
    "HasuraSettings",
    "IssuerSettings",
    "KeySettings",
    "LimitSettings",
    "Listen",
    "MachineTokenSettings",
    "ProxySettings",
    "RevocationSettings",
    "Secret",
    "Settings",
    "TokenSource",
    "issuer_from_publishable_key",
    "load_settings",
]


class ConfigError(Exception):
    """Invalid configuration: carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"invalid configuration: {self.problems[0]}"
        return "invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)


@dataclass(frozen=True)
class Listen:
    """A host and port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


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
    limits: LimitSettings = field(default_factory=LimitSettings)
    log_level: str = "INFO"
    log_format: str = "json"
    admin_token: Secret | None = None
    redis_url: Secret | None = None
    webhook_secret: Secret | None = None
    clerk_secret_key: Secret | None = None
    clerk_api_url: str = DEFAULT_API_URL
    token_types: frozenset[str] = DEFAULT_TOKEN_TYPES
    machine_tokens: MachineTokenSettings = field(default_factory=MachineTokenSettings)
    revocation: RevocationSettings = field(default_factory=RevocationSettings)
    source_path: str | None = None
    workos_webhook_secret: Secret | None = None
    hasura: HasuraSettings = field(default_factory=HasuraSettings)
    assertion: AssertionSettings = field(default_factory=AssertionSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    # Where facts shared by every worker (and kept across restarts) live; see gateway/state/.
    state_dir: str = field(default_factory=lambda: str(default_state_dir(os.environ)))
    shared_state: bool = True
    event_loop: str = "auto"  # auto (uvloop when installed) | uvloop | asyncio

    @property
    def mode(self) -> str:
        """`proxy` when an upstream is configured, else `forward_auth`."""
        return "proxy" if self.upstream else "forward_auth"


def _parse_listen(value: str, where: str, problems: list[str]) -> Listen | None:
    host, sep, port_text = value.rpartition(":")
    port = whole_number(port_text, 5)
    if not sep or port is None or not 0 <= port <= 65535:
        problems.append(f"{where}: {value!r} must be host:port")
        return None
    return Listen(host.strip("[]") or "0.0.0.0", port)


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
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        cause = getattr(exc, "problem", None)
        problems.append(f"config file {path}: not valid YAML{where}"
                        + (f": {cause}" if cause else ""))
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"config file {path}: must hold a mapping at the top level")
        return {}
    return data


def _env_number(env: Mapping[str, str], name: str, default: float, low: float, high: float,
                problems: list[str], *, whole: bool = False) -> float:
    """A number from the environment (overriding the file's), within bounds."""
    text = env.get(name)
    if not text:
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        problems.append(f"{name}: {text!r} must be {kind} from {low:g} to {high:g}")
        return default
    return float(value)


def _parse_event_loop(env: Mapping[str, str], root: Reader, problems: list[str]) -> str:
    """`event_loop` (GATEWAY_EVENT_LOOP overrides it): auto, uvloop or asyncio."""
    file_choice = root.text("event_loop", "auto") or "auto"
    choice = (env.get("GATEWAY_EVENT_LOOP") or file_choice).strip().lower()
    problem = loop_problem(choice)
    if problem is not None:
        problems.append(f"event_loop: {problem}")
        return "auto"
    return choice


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
    check_state_dir: Callable[[str], list[str]] | None = None,
) -> Settings:
    """Build settings from the environment and an optional YAML file; raise ConfigError.

    ``check_state_dir`` (the only I/O beyond reading files) adds the state directory's
    problems to the same error; `serve` and `check-config` pass it."""
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    path = config_path or env.get("GATEWAY_CONFIG") or None
    data = _read_yaml(path, problems) if path else {}
    if problems:  # the file itself is unusable: anything else would only echo that
        raise ConfigError(problems)
    root = Reader(data, "", problems)

    api_url = (env.get("CLERK_API_URL") or DEFAULT_API_URL).rstrip("/")
    issuer_readers = root.children("issuers")
    overrides = env_issuer_overrides(env, problems)
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
    workos_client_id = (env.get("WORKOS_CLIENT_ID") or "").strip()
    if workos_client_id and not any(r.data.get("name") == "workos" for r in issuer_readers):
        workos: dict[str, Any] = {"name": "workos", "preset": "workos",
                                  "client_id": workos_client_id}
        if env.get("WORKOS_API_URL"):
            workos["api_url"] = env["WORKOS_API_URL"].strip()
        issuer_readers.append(Reader(workos, "issuers[workos] (from WORKOS_CLIENT_ID)", problems))
    issuers = [i for i in (parse_issuer(r, env, api_url) for r in issuer_readers) if i]
    if not issuer_readers:
        problems.append(
            "no issuer configured: set CLERK_PUBLISHABLE_KEY, CLERK_ISSUER, CLERK_JWT_KEY or "
            "WORKOS_CLIENT_ID, or declare issuers in the config file")
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

    workers = int(_env_number(env, "GATEWAY_WORKERS", root.integer(
        "workers", 0, minimum=0, maximum=256), 0, 256, problems, whole=True))
    shutdown_timeout = _env_number(env, "GATEWAY_SHUTDOWN_TIMEOUT", root.number(
        "shutdown_timeout_seconds", 30.0, minimum=0, maximum=3600), 0, 3600, problems)
    proxy = parse_proxy(root.child("proxy"))
    event_loop = _parse_event_loop(env, root, problems)

    realm = root.text("realm", "clerk-gateway") or "clerk-gateway"
    if '"' in realm or "\\" in realm:
        problems.append("realm: must not contain quotes or backslashes")
    keys = parse_keys(root.child("keys"))
    token_sources = parse_token_sources(root)
    identity_headers = parse_identity_headers(root)
    route_options = parse_route_options(root)
    routes = parse_routes(
        root, problems, {i.name: i.issuer for i in issuers}, route_options)
    revocation = parse_revocation(root.child("revocation"), env, issuers, leeway, api_url)
    token_types = parse_token_types(root)
    check_accepts({r.name: r.rule.accepts for r in routes}, token_types, problems)
    machine_tokens = parse_machine_tokens(
        root.child("machine_tokens"), env, token_types, bool(env.get("CLERK_SECRET_KEY")))
    forward_auth = parse_forward_auth(root.child("forward_auth"))
    limits = parse_limits(root.child("limits"))
    hasura = parse_hasura(root.child("hasura"))
    cors = parse_cors(root.child("cors"), issuers,
                      [route_options.default.name, *(r.name for r in routes)])
    for route in routes:
        if route.upstream and not route.upstream.startswith(("http://", "https://")):
            problems.append(
                f"routes[{route.name}].upstream: {route.upstream!r} must be an http:// or "
                "https:// URL")
        elif route.upstream and not upstream:
            problems.append(
                f"routes[{route.name}].upstream: needs a default upstream (GATEWAY_UPSTREAM or "
                "upstream:) so the gateway runs as a proxy")

    assertion = parse_assertion(root.child("assertion"), env, upstream, identity_headers)

    def secret(name: str) -> Secret | None:
        value = env.get(name)
        return Secret(value) if value else None

    state_dir, shared_state = parse_state(root, env)
    if check_state_dir is not None:
        problems.extend(check_state_dir(state_dir))
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
        limits=limits,
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
        token_types=token_types,
        machine_tokens=machine_tokens,
        revocation=revocation,
        source_path=path,
        workos_webhook_secret=secret("WORKOS_WEBHOOK_SECRET"),
        hasura=hasura,
        assertion=assertion,
        cors=cors,
        state_dir=state_dir,
        shared_state=shared_state,
        event_loop=event_loop,
    )
