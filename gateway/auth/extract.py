"""Find the session token in a request: Authorization header, __session cookie, or more."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import hdrs
from multidict import CIMultiDictProxy

from gateway.auth.cookies import CookieReader, MalformedCookie, UnclearCookie
from gateway.config import TokenSource

__all__ = [
    "AmbiguousToken", "EmptyToken", "TokenExtractor", "UnreadableToken", "effective_sources",
    "visible_ascii",
]

# What a token may hold: visible ASCII (JWTs and opaque tokens alike).
_VISIBLE_ASCII = bytes(range(0x21, 0x7F))
# Blanks some reader splits an Authorization value on: str.split(), JavaScript's \s.
_OTHER_BLANKS = "\ufeff"


class AmbiguousToken(Exception):
    """The request carries conflicting copies of one token source, or one read differently
    by other parsers."""


class EmptyToken(Exception):
    """A token source is present but holds no token."""


class UnreadableToken(Exception):
    """A token source holds something no token is made of (not visible ASCII)."""


def visible_ascii(text: str) -> bool:
    """True when `text` is one or more visible ASCII characters (`!` to `~`)."""
    # Deleting every visible byte leaves nothing; in C, several times cheaper than a regex
    # over a session token's ~900 characters, read on every request.
    return text.isascii() and bool(text) and not text.encode("ascii").translate(
        None, _VISIBLE_ASCII)


def _checked(token: str, source: str) -> str:
    """The token when it is visible ASCII, else UnreadableToken."""
    if not visible_ascii(token):
        raise UnreadableToken(f"{source} holds characters no token has")
    return token


def read_credentials(value: str, scheme: str, source: str) -> str | None:
    """The token of `<scheme> SP <token>` (scheme in any ASCII case), None for other schemes.

    This is the one form read. A value that other common readers take for this scheme
    (Werkzeug and Django REST framework split on any whitespace, passport on JavaScript's
    `\\s`, some strip the token) but that is not exactly this form raises AmbiguousToken,
    so it can never fall through to the next source or to anonymous access.
    """
    head, space, token = value.partition(" ")
    if head.isascii() and head.lower() == scheme.lower():
        if not space or not token:
            raise EmptyToken(f"{source} holds no token")
        if visible_ascii(token):
            return token  # visible ASCII: no blank any reader could split it on
        words = token.replace(_OTHER_BLANKS, " ").split()
        if words != [token]:
            raise AmbiguousToken(f"{source} is read differently by other parsers")
        return _checked(token, source)
    words = value.replace(_OTHER_BLANKS, " ").split(None, 1)
    if words and words[0].casefold() == scheme.casefold():
        raise AmbiguousToken(f"{source} is read differently by other parsers")
    return None  # another scheme (e.g. Basic) is meant for the upstream


class TokenExtractor:
    """Reads tokens from the configured sources in order; the first present one wins.

    Cookies are read only when a cookie source is reached, and only the token cookie is
    looked for (gateway/auth/cookies.py): a request with a header token, or to a route that
    needs none, never pays for its Cookie header.
    """

    def __init__(self, sources: tuple[TokenSource, ...]) -> None:
        self._sources = sources
        self._cookies = {s.name: CookieReader(s.name) for s in sources if s.kind == "cookie"}

    def extract(
        self,
        headers: CIMultiDictProxy[str],
        query: Mapping[str, str] | None = None,
    ) -> str | None:
        """The token, None when no source holds one; raises on ambiguity or an unusable token."""
        for source in self._sources:
            if source.kind == "header":
                token = self._from_header(headers, source)
            elif source.kind == "cookie":
                token = self._from_cookie(headers, source.name)
            elif query is not None:
                token = query.get(source.name) or None
                if token is not None:
                    token = _checked(token, f"the {source.name} query parameter")
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
        value = values[0].strip(" \t")
        if source.scheme:
            return read_credentials(value, source.scheme, source.name)
        if not value:
            raise EmptyToken(f"{source.name} holds no token")
        return _checked(value, source.name)

    def _from_cookie(self, headers: CIMultiDictProxy[str], name: str) -> str | None:
        try:
            return self._cookies[name].read(headers.getall(hdrs.COOKIE, ()))
        except UnclearCookie as exc:
            raise AmbiguousToken(str(exc)) from None
        except MalformedCookie as exc:
            raise UnreadableToken(str(exc)) from None


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
