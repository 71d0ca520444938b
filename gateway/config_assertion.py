"""Settings of the signed identity assertion: the gateway's own short-lived JWT."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.configreader import Reader

__all__ = [
    "ASSERTION_ALGORITHMS",
    "DEFAULT_ASSERTION_HEADER",
    "AssertionSettings",
    "origin_of",
    "parse_assertion",
]

ASSERTION_ALGORITHMS = ("ES256", "EdDSA", "RS256")
DEFAULT_ASSERTION_HEADER = "X-Gateway-Assertion"
SIGNING_KEY_ENV = "GATEWAY_SIGNING_KEY_FILE"
_RESERVED_HEADERS = frozenset({
    "authorization", "cookie", "host", "connection", "content-length", "transfer-encoding",
    "x-request-id",
})


@dataclass(frozen=True)
class AssertionSettings:
    """Whether and how allowed requests carry a JWT signed by the gateway itself."""

    enabled: bool = False
    header: str = DEFAULT_ASSERTION_HEADER
    issuer: str | None = None
    audience: str | None = None
    lifetime_seconds: float = 60.0
    algorithm: str = "ES256"
    key_file: str | None = None
    claims_namespace: str | None = None
    default_role: str = "user"
    cache_size: int = 100_000


def origin_of(url: str) -> str:
    """The origin (scheme://host[:port]) of an absolute URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def parse_assertion(reader: Reader, env: Mapping[str, str], upstream: str | None,
                    identity_headers: Mapping[str, str]) -> AssertionSettings:
    """Read the `assertion:` section (GATEWAY_SIGNING_KEY_FILE overrides `key_file`)."""
    enabled = reader.flag("enabled", False)
    header = reader.text("header", DEFAULT_ASSERTION_HEADER) or DEFAULT_ASSERTION_HEADER
    if reader.header_name("header", header):
        lowered = header.lower().replace("_", "-")
        taken = {h.lower().replace("_", "-") for h in identity_headers.values()}
        if lowered in _RESERVED_HEADERS or lowered in taken:
            reader.problem(f"{header!r} is already used by the gateway or an identity header",
                           "header")
    issuer = reader.text("issuer")
    audience = reader.text("audience")
    lifetime = reader.number("lifetime_seconds", 60.0, minimum=5, maximum=3600)
    algorithm = reader.choice("algorithm", "ES256", ASSERTION_ALGORITHMS)
    key_file = env.get(SIGNING_KEY_ENV) or reader.text("key_file")
    namespace = reader.text("claims_namespace")
    default_role = reader.text("default_role", "user") or "user"
    cache_size = reader.integer("cache_size", 100_000, minimum=0, maximum=10_000_000)
    reader.check_unknown()
    if enabled and not issuer:
        reader.problem("is required when assertions are enabled (the `iss` upstreams check)",
                       "issuer")
    if enabled and not audience and not upstream:
        reader.problem("is required in forward-auth mode (there is no upstream origin to use "
                       "as the default `aud`)", "audience")
    return AssertionSettings(
        enabled=enabled, header=header, issuer=issuer, audience=audience,
        lifetime_seconds=lifetime, algorithm=algorithm, key_file=key_file,
        claims_namespace=namespace, default_role=default_role, cache_size=cache_size,
    )
