"""Settings for credentials besides session tokens: `token_types`, `accepts`, `machine_tokens`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.configreader import Reader, Secret

__all__ = [
    "DEFAULT_TOKEN_TYPES",
    "OPAQUE_TYPES",
    "TOKEN_TYPE_NAMES",
    "MachineTokenSettings",
    "check_accepts",
    "parse_accepts",
    "parse_machine_tokens",
    "parse_token_types",
]

TOKEN_TYPE_NAMES = ("session_token", "jwt_template", "m2m_token", "api_key", "oauth_token")
DEFAULT_TOKEN_TYPES = frozenset({"session_token"})
OPAQUE_TYPES = ("api_key", "m2m_token", "oauth_token")


@dataclass(frozen=True)
class MachineTokenSettings:
    """How opaque machine credentials are verified at Clerk's Backend API (`machine_tokens:`)."""

    cache_ttl_seconds: float = 300.0
    negative_ttl_seconds: float = 30.0
    grace_seconds: float = 60.0
    failure_mode: str = "fail_closed"
    timeout_seconds: float = 2.0
    cache_size: int = 100_000
    client_lookups_per_second: float = 1.0
    client_lookup_burst: int = 20
    lookups_per_second: float = 5.0  # every client together (Clerk allows 10/s in development)
    lookup_burst: int = 50
    machine_secret_key: Secret | None = None


def _type_names(value: object, where: str, reader: Reader) -> frozenset[str] | None:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        reader.problem(f"must be a non-empty list of {', '.join(TOKEN_TYPE_NAMES)}", where)
        return None
    unknown = [n for n in names if n not in TOKEN_TYPE_NAMES]
    if unknown:
        reader.problem(f"unknown token type {', '.join(map(repr, unknown))} (expected "
                       f"{', '.join(TOKEN_TYPE_NAMES)})", where)
        return None
    return frozenset(names)


def parse_token_types(root: Reader) -> frozenset[str]:
    """Top-level `token_types`: the credential types the gateway verifies at all."""
    if not root.has("token_types"):
        root.raw("token_types")
        return DEFAULT_TOKEN_TYPES
    return _type_names(root.raw("token_types"), "token_types", root) or DEFAULT_TOKEN_TYPES


def parse_accepts(item: Reader) -> frozenset[str] | None:
    """A route's `accepts`: None (the top-level token_types), a list, or `any` (all types)."""
    if not item.has("accepts"):
        return None
    value = item.raw("accepts")
    if value == "any":
        return frozenset(TOKEN_TYPE_NAMES)
    return _type_names(value, "accepts", item)


def check_accepts(routes: Mapping[str, frozenset[str] | None], token_types: frozenset[str],
                  problems: list[str]) -> None:
    """Every type a route lists must be enabled by `token_types` (`any` means all enabled)."""
    for name, accepts in routes.items():
        if accepts is None or accepts == frozenset(TOKEN_TYPE_NAMES):
            continue
        missing = sorted(accepts - token_types)
        if missing:
            problems.append(f"routes[{name}].accepts: {', '.join(missing)} is not enabled by "
                            "token_types (add it there too)")


def parse_machine_tokens(reader: Reader, env: Mapping[str, str], token_types: frozenset[str],
                         has_secret_key: bool) -> MachineTokenSettings:
    """Read `machine_tokens` and CLERK_MACHINE_SECRET_KEY."""
    settings = MachineTokenSettings(
        cache_ttl_seconds=reader.number("cache_ttl_seconds", 300.0, minimum=0, maximum=86400),
        negative_ttl_seconds=reader.number("negative_ttl_seconds", 30.0, minimum=0,
                                           maximum=3600),
        grace_seconds=reader.number("grace_seconds", 60.0, minimum=0, maximum=86400),
        failure_mode=reader.choice("failure_mode", "fail_closed", ("fail_closed", "fail_open")),
        timeout_seconds=reader.number("timeout_seconds", 2.0, minimum=0.1, maximum=60),
        cache_size=reader.integer("cache_size", 100_000, minimum=1, maximum=10_000_000),
        client_lookups_per_second=reader.number("client_lookups_per_second", 1.0,
                                                minimum=0.001, maximum=10_000),
        client_lookup_burst=reader.integer("client_lookup_burst", 20, minimum=1,
                                           maximum=100_000),
        lookups_per_second=reader.number("lookups_per_second", 5.0, minimum=0.001,
                                         maximum=100_000),
        lookup_burst=reader.integer("lookup_burst", 50, minimum=1, maximum=1_000_000),
        machine_secret_key=Secret(env["CLERK_MACHINE_SECRET_KEY"])
        if env.get("CLERK_MACHINE_SECRET_KEY") else None,
    )
    reader.check_unknown()
    if "api_key" in token_types and not has_secret_key:
        reader.problems.append("token_types: api_key is verified at Clerk's Backend API, which "
                               "needs CLERK_SECRET_KEY")
    return settings
