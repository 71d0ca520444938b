"""Issuer settings: who may sign tokens, how their keys are found, how claims are read."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.configreader import Reader, Secret, check_key_url

__all__ = [
    "ALLOWED_ALGORITHMS",
    "DEFAULT_API_URL",
    "DEFAULT_MAX_TOKEN_LIFETIME",
    "MAX_TOKEN_LIFETIME",
    "WORKOS_API_URL",
    "ClaimPaths",
    "IssuerSettings",
    "KeySettings",
    "env_issuer_overrides",
    "issuer_from_publishable_key",
    "parse_issuer",
    "parse_keys",
    "workos_urls",
]

# A token lifetime (exp - iat) above this is refused unless the issuer declares a maximum:
# revocations are kept this long (plus leeway), so none can expire before its tokens.
DEFAULT_MAX_TOKEN_LIFETIME = 86400.0
MAX_TOKEN_LIFETIME = 90 * 86400.0  # the longest a revocation entry can live

ALLOWED_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
DEFAULT_API_URL = "https://api.clerk.com"
WORKOS_API_URL = "https://api.workos.com"
PRESETS = ("clerk", "oidc", "workos")


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
    roles: str | None = None

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
    max_token_lifetime: float | None = None  # as declared; see effective_max_lifetime
    client_id: str | None = None

    @property
    def effective_max_lifetime(self) -> float:
        """The longest token lifetime (exp - iat) accepted: declared, else 24 hours.

        Every issuer has one, so a revocation can always be kept until every token it may
        apply to has expired (RevocationSettings.horizon_seconds).
        """
        return self.max_token_lifetime or DEFAULT_MAX_TOKEN_LIFETIME

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

def workos_urls(api_url: str, client_id: str) -> tuple[str, str]:
    """A WorkOS client's issuer and key set URL (AuthKit access tokens)."""
    base = api_url.rstrip("/")
    return f"{base}/user_management/{client_id}", f"{base}/sso/jwks/{client_id}"


def env_issuer_overrides(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
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

def parse_claim_paths(reader: Reader) -> ClaimPaths:
    """Read an OIDC issuer's claim pointers."""
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

def parse_issuer(reader: Reader, env: Mapping[str, str], api_url: str) -> IssuerSettings | None:
    """Read one `issuers` entry (None when it names no issuer)."""
    name = reader.text("name", required=True) or "?"
    preset = reader.choice("preset", "clerk", PRESETS)
    client_id = reader.text("client_id") if preset == "workos" else None
    issuer = reader.text("issuer", required=preset != "workos")
    jwks_url = reader.text("jwks_url")
    jwt_key = reader.text("jwt_key")
    key_file = reader.text("jwt_key_file")
    if preset == "workos":
        issuer, derived_jwks = _workos_defaults(reader, client_id, issuer)
        if not (jwks_url or jwt_key or key_file):
            jwks_url = derived_jwks
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
    max_lifetime = reader.number("max_token_lifetime_seconds", 0, minimum=0,
                                 maximum=MAX_TOKEN_LIFETIME)
    if reader.has("max_token_lifetime_seconds") and not max_lifetime:
        reader.problem(
            "0 (no maximum) is not accepted: a token may not outlive the revocations that "
            f"apply to it; leave it out for {DEFAULT_MAX_TOKEN_LIFETIME:g} (24 hours) or give "
            f"a maximum up to {MAX_TOKEN_LIFETIME:g} (90 days)", "max_token_lifetime_seconds")
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
        claims=parse_claim_paths(reader.child("claims")),
        accept_pending_sessions=reader.flag("accept_pending_sessions", False),
        max_token_lifetime=max_lifetime or None,
        client_id=client_id,
    )
    reader.check_unknown()
    return settings if issuer else None

def _workos_defaults(reader: Reader, client_id: str | None,
                     issuer: str | None) -> tuple[str | None, str | None]:
    """The issuer and key URL of a `preset: workos` entry (derived from its client_id)."""
    api_url = reader.text("api_url", WORKOS_API_URL) or WORKOS_API_URL
    if check_key_url(api_url):
        reader.problem(check_key_url(api_url) or "", "api_url")
    if not client_id:
        if not issuer:
            reader.problem("preset workos needs client_id (client_...) or an issuer", "client_id")
        return issuer, None
    if not client_id.isprintable() or "/" in client_id or not client_id.isascii() \
            or " " in client_id:
        reader.problem("must be a WorkOS client id (client_...)", "client_id")
        return issuer, None
    derived_issuer, derived_jwks = workos_urls(api_url, client_id)
    return issuer or derived_issuer, derived_jwks


def parse_keys(reader: Reader) -> KeySettings:
    """Read the `keys` section."""
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
