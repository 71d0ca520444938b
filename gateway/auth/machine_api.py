"""Clerk's Backend API verify endpoints for opaque machine credentials.

As clerk/javascript `packages/backend/src/api/endpoints/` calls them:

- api_key: `POST /v1/api_keys/verify` `{"secret": <token>}`, `Bearer CLERK_SECRET_KEY`;
- m2m_token: `POST /v1/m2m_tokens/verify` `{"secret": <token>}`, `Bearer
  CLERK_MACHINE_SECRET_KEY` (the secret key when no machine key is set);
- oauth_token: `POST /v1/oauth_applications/access_tokens/verify`
  `{"access_token": <token>}`, `Bearer CLERK_SECRET_KEY`.

A 200 answer carries `subject`, `scopes`, `claims`, `revoked`, `expired` and `expiration`
(milliseconds). 400/404/422 mean the token is not valid; 429 asks to wait `Retry-After`;
anything else (401/403 included: the gateway's own key is wrong) is a failure of the API.
Nothing here logs a request, a header or an exception's repr: they hold the secret key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import hdrs

from gateway.auth.classify import TokenType
from gateway.auth.introspection import retry_after_seconds
from gateway.configreader import Secret

__all__ = ["VERIFY_PATHS", "ApiAnswer", "MachineApi"]

log = logging.getLogger("gateway.machine_api")

VERIFY_PATHS: Mapping[TokenType, tuple[str, str]] = {
    TokenType.API_KEY: ("/v1/api_keys/verify", "secret"),
    TokenType.M2M_TOKEN: ("/v1/m2m_tokens/verify", "secret"),
    TokenType.OAUTH_TOKEN: ("/v1/oauth_applications/access_tokens/verify", "access_token"),
}
_INVALID_STATUSES = frozenset((400, 404, 410, 422))
_MAX_BODY = 256 * 1024


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """What the API said: `valid` (with the body), `invalid`, `rate_limited` or `failed`."""

    kind: str
    body: Mapping[str, Any] | None = None
    retry_after: float = 0.0


class MachineApi:
    """Calls the verify endpoint for one opaque token (no caching here: see machine.py)."""

    def __init__(
        self,
        api_url: str,
        secret_key: Secret | None,
        machine_secret_key: Secret | None,
        session: Callable[[], aiohttp.ClientSession | None],
        timeout_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._base = api_url.rstrip("/")
        self._keys = {
            TokenType.API_KEY: secret_key,
            TokenType.OAUTH_TOKEN: secret_key,
            TokenType.M2M_TOKEN: machine_secret_key or secret_key,
        }
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._clock = clock

    def can_verify(self, token_type: TokenType) -> bool:
        """True when a key is configured for this type's endpoint."""
        return self._keys.get(token_type) is not None

    async def verify(self, token_type: TokenType, token: str) -> ApiAnswer:
        """Ask the API about one token; never raises for network or protocol trouble."""
        key = self._keys.get(token_type)
        session = self._session()
        if key is None or session is None:
            return ApiAnswer("failed")
        path, field = VERIFY_PATHS[token_type]
        try:
            async with session.post(
                self._base + path, json={field: token}, timeout=self._timeout,
                headers={hdrs.AUTHORIZATION: f"Bearer {key.value}"}, allow_redirects=False,
            ) as response:
                status = response.status
                if status == 429:
                    wait = retry_after_seconds(response.headers.get(hdrs.RETRY_AFTER),
                                               self._clock())
                    return ApiAnswer("rate_limited", retry_after=wait)
                if status in _INVALID_STATUSES:
                    return ApiAnswer("invalid")
                if status != 200:
                    log.warning("machine token verification failed",
                                extra={"status": status, "token_type": token_type.value})
                    return ApiAnswer("failed")
                raw = await response.content.read(_MAX_BODY + 1)
        except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeError) as exc:
            log.warning("machine token verification unreachable",
                        extra={"error": type(exc).__name__, "token_type": token_type.value})
            return ApiAnswer("failed")
        return _parse(raw, token_type)


def _parse(raw: bytes, token_type: TokenType) -> ApiAnswer:
    if len(raw) > _MAX_BODY:
        return ApiAnswer("failed")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        log.warning("machine token verification answer is not JSON",
                    extra={"token_type": token_type.value})
        return ApiAnswer("failed")
    if not isinstance(body, dict):
        return ApiAnswer("failed")
    return ApiAnswer("valid", body)
