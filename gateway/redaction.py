"""Secrets never reach a log line: errors described without their arguments, secrets masked.

Exceptions of HTTP clients carry their request (aiohttp's `request_info` holds the
`Authorization: Bearer sk_...` header) and their repr shows it, so no exception is ever
logged by repr: `describe_error` gives its type and the first line of its message. As a
second line of defence the log handler masks every configured secret's value in every line
(`gateway.logs.protect_secrets`), whatever a library put in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import aiohttp

from gateway.config import Settings

__all__ = ["describe_error", "secret_values"]

_MAX_MESSAGE = 200


def describe_error(exc: BaseException) -> str:
    """`Type: message` for a log line: never the repr, never more than one line."""
    if isinstance(exc, aiohttp.ClientResponseError):  # its str names the URL, not headers
        message = f"{exc.status} {exc.message}"
    else:
        message = str(exc)
    first = message.split("\n", 1)[0].strip()[:_MAX_MESSAGE]
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def secret_values(settings: Settings) -> Iterator[str]:
    """Every configured secret's value (and a Redis URL's password, raw and decoded)."""
    for secret in (settings.admin_token, settings.webhook_secret, settings.clerk_secret_key,
                   settings.redis_url, settings.workos_webhook_secret,
                   *(i.secret_key for i in settings.issuers)):
        if secret is not None:
            yield secret.value
    if settings.redis_url is not None:
        password = urlsplit(settings.redis_url.value).password
        if password:
            yield password
            yield unquote(password)
