"""Gateways that accept Clerk's machine credentials, against the fake Clerk (DevIssuer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running

ALL_TYPES = ["session_token", "jwt_template", "m2m_token", "api_key", "oauth_token"]
VERIFY_HITS = ("api_keys_verify", "m2m_tokens_verify", "oauth_tokens_verify")
ROUTES = [
    {"name": "sessions", "path_prefix": "/session", "accepts": ["session_token"]},
    {"name": "keys", "path_prefix": "/keys", "accepts": ["api_key"]},
    {"name": "m2m", "path_prefix": "/m2m", "accepts": ["m2m_token"]},
    {"name": "oauth", "path_prefix": "/oauth", "accepts": ["oauth_token"]},
    {"name": "templates", "path_prefix": "/templates", "accepts": ["jwt_template"]},
    {"name": "scoped", "path_prefix": "/scoped", "accepts": "any",
     "require": {"scope": ["write", "admin"]}},
    {"name": "admins", "path_prefix": "/admin", "accepts": "any", "require": {"role": "admin"}},
    {"name": "anything", "path_prefix": "/any", "accepts": "any"},
]


class Clock:
    """A clock the test moves by hand (starting at real time, so minted JWTs are valid)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def machine_env(clerk: DevIssuer, **extra: str) -> dict[str, str]:
    """Backend API access to the fake Clerk."""
    return {"CLERK_SECRET_KEY": clerk.secret_key, "CLERK_API_URL": clerk.issuer,
            "CLERK_MACHINE_SECRET_KEY": clerk.machine_secret_key, **extra}


async def machine_gateway(
    make_gateway: GatewayFactory, clerk: DevIssuer, *, machine_tokens: dict[str, Any] | None
    = None, extra: dict[str, Any] | None = None, env: dict[str, str] | None = None,
    clock: Callable[[], float] | None = None,
) -> Running:
    """A gateway enabling every token type, with one route per type (see ROUTES)."""
    config: dict[str, Any] = {"token_types": ALL_TYPES, "routes": ROUTES,
                              "revocation": {"local_ttl_seconds": 60}}
    if machine_tokens is not None:
        config["machine_tokens"] = machine_tokens
    config.update(extra or {})
    return await make_gateway(env=machine_env(clerk, **(env or {})), config=config, clock=clock)


def verify_calls(clerk: DevIssuer) -> int:
    """Calls the fake Backend API's verify endpoints received, all types together."""
    return sum(clerk.hits[h] for h in VERIFY_HITS)
