"""The proxy fast door's upstream request head, built from the header bytes the front parsed.

The reference is `request_head(..., *HeaderHygiene.upstream_pairs(...))` (gateway/http/
upstream.py, hop.py), which the aiohttp door and the task path keep using. This builds the
same bytes with less work: the client's fields are filtered as bytes (names lowered with
bytes.lower(), the hygiene's names as bytes) and copied without being decoded and encoded
again; only what the gateway adds (HeaderHygiene.added_pairs) is formatted and encoded, the
identity headers' lines once per identity tuple (the verifier keeps one per cached token).

It answers only when its bytes are provably the reference's (plain()), and otherwise
returns the reference's own result (or lets it raise its ValueError):

- every field, kept or dropped, is printable ASCII plus tab: there bytes.lower() and
  str.lower(), the decoding and the encoding agree, so each test on a name (the dropped
  names, the prefixes, `_` read as `-`) decides alike; outside it they may not (U+212A KELVIN
  SIGN lowers to ASCII 'k'; undecodable bytes make the reference's encoding raise). So is the
  whole head, but for the CR LF ending each line (what the gateway adds is formatted as the
  reference formats it; one of its values outside ASCII takes the reference's path too);
- the names a `Connection` header lists are the reference's own (connection_tokens() on the
  text);
- every identity header name is one the hygiene drops from the client in every spelling and
  none repeats another name the gateway adds: then no client header kept shares a name with
  an added one, which the reference would replace in place (hop.put). Identity names from a
  reloaded configuration the hygiene was not built with take the reference's path.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import hdrs
from multidict import CIMultiDictProxy

from gateway.by_identity import ByIdentity
from gateway.http.front import Field, encode_fields
from gateway.http.headers import REQUEST_ID
from gateway.http.hop import HeaderHygiene, connection_tokens, normalize_name
from gateway.http.upstream import Key, head_end, request_head

__all__ = ["LeanHead", "usable_id"]

# The bytes a field may hold here: printable ASCII and tab.
_FIELD_BYTES = bytes(range(0x20, 0x7F)) + b"\t"
# The names the gateway adds besides the identity headers (an identity header sharing one of
# these, or Content-Length which decides the framing, takes the reference's path).
_ADDED = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "host",
                    "x-request-id", "content-length"})
_MAX_REMEMBERED = 256  # identity name sets (from the configuration), short Connection lists
_SHORT_LIST = 64  # characters of a Connection list worth remembering
_SHORT_HOST = 255  # characters of a Host whose forwarded lines are worth remembering
_MAX_BLOCKS = 1024  # identity tuples (or peers and Hosts) whose lines are remembered
#                     (forgotten all at once)
_ID_NAME = f"{REQUEST_ID}: ".encode()


class LeanHead:
    """Upstream request heads for the lean pool, from a HeaderHygiene's rules."""

    __slots__ = ("_blocks", "_dropped", "_forwarded", "_hygiene", "_identities", "_listed",
                 "_prefixes", "_usable")

    def __init__(self, hygiene: HeaderHygiene) -> None:
        self._hygiene = hygiene
        # A rule no ASCII name can meet is left out: it drops none of the fields answered here.
        self._dropped = frozenset(n.encode() for n in hygiene.dropped if n.isascii())
        self._prefixes = tuple(p.encode() for p in hygiene.prefixes if p.isascii())
        # The client's Host is always dropped, so the head's Host is the gateway's own.
        self._usable = "host" in hygiene.dropped
        self._identities: dict[tuple[str, ...], bool] = {}
        self._listed: dict[tuple[str, ...], frozenset[bytes]] = {}
        self._forwarded: dict[tuple[str | None, str, str | None], bytes] = {}
        self._blocks: ByIdentity[Sequence[tuple[str, str]], bytes | None] = ByIdentity(
            _MAX_BLOCKS)

    # head(), plain() and around() take their arguments by position too: keywords cost a
    # per-call mapping on every proxied request.
    def head(self, key: Key, method: str, target: str, fields: Sequence[Field],
             headers: CIMultiDictProxy[str], client_ip: str | None, scheme: str,
             identity: Sequence[tuple[str, str]], request_id: str, length: int | None) -> bytes:
        """The head request_head(upstream_pairs(...)) builds for a request without a chunked
        body: the same bytes, or its ValueError (`fields`: `headers` as bytes)."""
        head = self.plain(key, method, target, fields, headers, client_ip, scheme, identity,
                          request_id, length)
        if head is not None:
            return head
        pairs, lows = self._hygiene.upstream_pairs(
            headers, client_ip=client_ip, scheme=scheme, identity=identity,
            request_id=request_id)
        return request_head(key, method, target, pairs, False, length, lows)

    def plain(self, key: Key, method: str, target: str, fields: Sequence[Field],
              headers: CIMultiDictProxy[str], client_ip: str | None, scheme: str,
              identity: Sequence[tuple[str, str]], request_id: str, length: int | None
              ) -> bytes | None:
        """head(), from the bytes; None when that is not provably the reference's head."""
        around = self.around(key, method, target, fields, headers, client_ip, scheme, identity,
                             length)
        if around is None or not usable_id(request_id):
            return None
        return b"".join((around[0], request_id.encode(), around[1]))

    def around(self, key: Key, method: str, target: str, fields: Sequence[Field],
               headers: CIMultiDictProxy[str], client_ip: str | None, scheme: str,
               identity: Sequence[tuple[str, str]], length: int | None
               ) -> tuple[bytes, bytes] | None:
        """plain()'s head cut where the request id goes (after `X-Request-Id: `): the same
        for every id usable_id() accepts; None when it is not provably the reference's."""
        hygiene = self._hygiene
        block = self._blocks.of(identity, self._lines_of, remember=_unchangeable)
        if not self._usable or block is None:
            return None
        gone = self._dropped
        if hdrs.CONNECTION in headers:
            gone = self._with_listed(headers)
        prefixes = self._prefixes
        parts = [b""]  # the request line goes first
        dropped: list[bytes] = []
        length_seen = False
        for name, low, value in fields:
            norm = low.replace(b"_", b"-")
            if norm in gone or norm.startswith(prefixes):
                dropped += (name, value)
                continue
            parts += (name, b": ", value, b"\r\n")
            if low == b"content-length":
                length_seen = True
        if dropped and b"".join(dropped).translate(None, _FIELD_BYTES):
            return None
        kept = len(parts) >> 2
        # What the gateway adds, in added_pairs()' order: the forwarded headers and Host
        # (`forwarded`, checked once per peer, scheme and Host), the identity lines (`block`,
        # checked once per identity), X-Request-Id.
        host = headers.get(hdrs.HOST)
        forwarded = self._forwarded_lines(headers, client_ip, scheme, host)
        if forwarded is None:
            return None
        # Host: the one added when preserved (the client's is dropped), else the key's.
        host_seen = hygiene.preserve_host and bool(host)
        tail = ["\r\n", *head_end(key, method, False, length, host_seen, length_seen)]
        try:
            parts[0] = f"{method} {target} HTTP/1.1\r\n".encode()
            ending = "".join(tail).encode()
        except UnicodeEncodeError:
            return None  # (a lone surrogate) the reference raises its ValueError
        head = b"".join(parts)
        # Printable ASCII and tab, and a CR LF ending each line, nothing else (so a value
        # outside ASCII, or a CR or LF where the reference raises, takes the text path).
        if (head.translate(None, _FIELD_BYTES) != b"\r\n" * (1 + kept)
                or ending.translate(None, _FIELD_BYTES) != b"\r\n" * len(tail)):
            return None
        return b"".join((head, forwarded, block, _ID_NAME)), ending

    def _forwarded_lines(self, headers: CIMultiDictProxy[str], client_ip: str | None,
                         scheme: str, host: str | None) -> bytes | None:
        """The forwarded headers' (and a preserved Host's) lines, printable ASCII and tab
        each; None when one is not (the reference builds the head). Remembered per peer,
        scheme and (short) Host when the peer is not trusted (nothing else decides them then).
        """
        known = self._forwarded.get((client_ip, scheme, host))
        if known is not None:  # (only an untrusted peer's are kept; trust never changes)
            return known or None  # (b"": remembered as unusable)
        hygiene = self._hygiene
        # (a long Host is worked out each time: the memo's memory stays small)
        remembered = not hygiene.trusts(client_ip) and (host is None or len(host) <= _SHORT_HOST)
        # (X-Forwarded-Proto is always added: b"" is never usable lines)
        lines = _usable_lines(hygiene.forwarded_pairs(headers, client_ip=client_ip,
                                                      scheme=scheme)) or b""
        if remembered:
            if len(self._forwarded) >= _MAX_BLOCKS:
                self._forwarded.clear()
            self._forwarded[client_ip, scheme, host] = lines
        return lines or None

    def _with_listed(self, headers: CIMultiDictProxy[str]) -> frozenset[bytes]:
        """The dropped names and those the `Connection` headers list (the reference's own
        connection_tokens()); remembered for short lists, as `keep-alive` or `close`."""
        values = tuple(headers.getall(hdrs.CONNECTION))
        gone = self._listed.get(values)
        if gone is None:
            gone = self._dropped.union(
                n.encode() for n in connection_tokens(headers) if n.isascii())
            if len(self._listed) < _MAX_REMEMBERED and sum(map(len, values)) <= _SHORT_LIST:
                self._listed[values] = gone
        return gone

    def _lines_of(self, identity: Sequence[tuple[str, str]]) -> bytes | None:
        """The identity headers' lines as the head holds them, when every name is plain
        (_plain_identity()) and every line printable ASCII and tab; else None (the reference
        builds the head). plain() remembers them per identity tuple (the verifier keeps one
        per token), only for what cannot change under the key (a tuple of tuples of str)."""
        if not self._plain_identity(identity):
            return None
        return _usable_lines(identity)

    def _plain_identity(self, identity: Sequence[tuple[str, str]]) -> bool:
        """True when every identity name is dropped from the client in every spelling and
        none repeats another added name (remembered per set of names)."""
        names = tuple([name for name, _ in identity])
        plain = self._identities.get(names)
        if plain is None:
            hygiene = self._hygiene
            lows = [name.lower() for name in names]
            keys = [normalize_name(name) for name in names]
            plain = (len(set(lows)) == len(lows) and _ADDED.isdisjoint(lows)
                     and all(k in hygiene.dropped or k.startswith(hygiene.prefixes)
                             for k in keys))
            if len(self._identities) < _MAX_REMEMBERED:
                self._identities[names] = plain
        return plain


def _unchangeable(identity: Sequence[tuple[str, str]]) -> bool:
    """True for a tuple of tuples (of str): nothing in it can change under its identity."""
    return type(identity) is tuple and all(type(pair) is tuple for pair in identity)


def usable_id(request_id: str) -> bool:
    """True for an id the head may hold as it is: printable ASCII and tab (as request_id()
    makes them; the reference's path decides about any other)."""
    if request_id.isascii() and request_id.isprintable():
        return True  # (the usual id, told without encoding it)
    try:
        data = request_id.encode()
    except UnicodeEncodeError:
        return False
    return not data.translate(None, _FIELD_BYTES)


def _usable_lines(pairs: Sequence[tuple[str, str]]) -> bytes | None:
    """The pairs' `name: value` lines, when each is printable ASCII and tab but for its CR LF;
    else None (the reference builds the head, or raises its ValueError for a lone surrogate)."""
    try:
        lines = encode_fields(pairs)
    except UnicodeEncodeError:
        return None
    if lines.translate(None, _FIELD_BYTES) != b"\r\n" * len(pairs):
        return None
    return lines
