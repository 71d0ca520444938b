"""Find the session token in a request: Authorization header, __session cookie, or more."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDictProxy

from gateway.config import TokenSource

__all__ = ["AmbiguousToken", "EmptyToken", "TokenExtractor", "effective_sources"]

_SUFFIXED_SESSION = "__session_"


class AmbiguousToken(Exception):
    """The request carries conflicting copies of one token source."""


class EmptyToken(Exception):
    """A token source is present but holds no token."""


class TokenExtractor:
    """Reads tokens from the configured sources in order; the first present one wins."""

    def __init__(self, sources: tuple[TokenSource, ...]) -> None:
        self._sources = sources

    def extract(
        self,
        headers: CIMultiDictProxy[str],
        cookies: Mapping[str, str],
        query: Mapping[str, str] | None = None,
    ) -> str | None:
        """The token, None when no source holds one; raises on ambiguity or an empty token."""
        for source in self._sources:
            if source.kind == "header":
                token = self._from_header(headers, source)
            elif source.kind == "cookie":
                token = self._from_cookie(cookies, source.name)
            elif query is not None:
                token = query.get(source.name) or None
            else:
                token = None
            if token is not None:
                return token
        return None

    @staticmethod
    def _from_header(headers: CIMultiDictProxy[str], source: TokenSource) -> str | None:
        values = headers.getall(source.name, ())
        if not values:
            return None
        if len(values) > 1:
            raise AmbiguousToken(f"more than one {source.name} header")
        value = values[0].strip()
        if source.scheme:
            scheme, _, token = value.partition(" ")
            if scheme.lower() != source.scheme.lower():
                return None  # another scheme (e.g. Basic) is meant for the upstream
            value = token.strip()
        if not value:
            raise EmptyToken(f"{source.name} holds no token")
        return value

    @staticmethod
    def _from_cookie(cookies: Mapping[str, str], name: str) -> str | None:
        value = cookies.get(name)
        if value:
            return value
        if name != "__session":
            return None
        suffixed = {
            v for k, v in cookies.items()
            if k.startswith(_SUFFIXED_SESSION) and len(k) == len(_SUFFIXED_SESSION) + 8 and v
        }
        if len(suffixed) > 1:
            raise AmbiguousToken("more than one suffixed __session cookie")
        return suffixed.pop() if suffixed else None


def effective_sources(
    sources: tuple[TokenSource, ...], upstream: str | None, websocket_query: str | None
) -> tuple[TokenSource, ...]:
    """The configured sources, plus the WebSocket query parameter in proxy mode (read last).

    The pipeline reads query sources only when a door passes a query, and the proxy does
    so for WebSocket upgrades only: tokens in URLs end up in logs everywhere else.
    """
    if not upstream or not websocket_query or any(
        s.kind == "query" and s.name == websocket_query for s in sources
    ):
        return sources
    return (*sources, TokenSource("query", websocket_query))
