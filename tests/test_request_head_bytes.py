"""The fast door's upstream request head from bytes is the reference's, byte for byte.

LeanHead (gateway/http/lean_head.py) builds the head from the header fields as the front
parsed them; the reference is request_head(upstream_pairs(...)) on the text the pipeline
reads. Hypothesis generates header lists with arbitrary bytes (CR, LF, NUL, 0x80-0xff, U+212A
KELVIN SIGN in UTF-8), every spelling of the identity, forwarded and rerouting headers,
Connection lists, duplicates, trusted and untrusted client addresses, identity headers that
collide, and hygiene settings; both must give the same bytes or the same ValueError, and the
bytes path must answer by itself whenever the input is plain.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from ipaddress import ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry

from gateway.config import Settings, load_settings
from gateway.devissuer import DevIssuer
from gateway.http.front import HANDOVER_CAUSES, Field, FrontDoor, FrontProtocol, field_text
from gateway.http.hop import HeaderHygiene
from gateway.http.lean_head import LeanHead, usable_id
from gateway.http.upstream import Key, request_head
from gateway.metrics import Metrics
from tests.conftest import GatewayFactory
from tests.proxy_support import Upstream, raw_request, status_of

BASE = load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                      "GATEWAY_UPSTREAM": "http://127.0.0.1:9"})
TRUSTED = "10.1.2.3"


def hygiene_of(**proxy: object) -> HeaderHygiene:
    """A HeaderHygiene for the base settings with some `proxy:` settings changed."""
    changed: Settings = dataclasses.replace(
        BASE, proxy=dataclasses.replace(BASE.proxy, **proxy))  # type: ignore[arg-type]
    return HeaderHygiene(changed)


HYGIENES = [
    hygiene_of(),
    hygiene_of(preserve_host=False, forward_authorization=False, forward_cookies=False),
    hygiene_of(trusted_proxies=(ip_network("10.0.0.0/8"),),
               strip_header_prefixes=("X-Internal-", "x_secret_")),
]
BUILDERS = [LeanHead(h) for h in HYGIENES]
IDENTITY_NAMES = [*BASE.identity_headers.values(), BASE.assertion.header]
# Names worth spelling every way: what the gateway controls, adds, drops or frames with.
NAMES = [
    *IDENTITY_NAMES, "X-Request-Id", "X-Forwarded-For", "X-Forwarded-Host",
    "X-Forwarded-Proto", "X-Forwarded-Prefix", "Forwarded", "X-Real-IP", "Host", "Connection",
    "Keep-Alive", "TE", "Upgrade", "Proxy-Authorization", "Authorization", "Cookie",
    "Content-Length", "Expect", "X-Original-URL", "X-Envoy-Original-Path",
    "X-HTTP-Method-Override", "X-Internal-Token", "X-Secret-Key", "Accept", "User-Agent",
    "X-Custom",
]
KELVIN = "\u212a".encode()  # lower-cases to ASCII 'k' as text, stays as it is as bytes


@st.composite
def spelled(draw: st.DrawFn) -> bytes:
    """A listed name in random case with `-` or `_`, sometimes a K as the Kelvin sign."""
    out = []
    for char in draw(st.sampled_from(NAMES)):
        if char == "-":
            out.append(draw(st.sampled_from("-_")).encode())
        elif char in "kK" and draw(st.integers(0, 5)) == 0:
            out.append(KELVIN)
        else:
            out.append((char.upper() if draw(st.booleans()) else char.lower()).encode())
    return b"".join(out)


names = st.one_of(spelled(), st.binary(min_size=1, max_size=12))
listed = st.lists(spelled(), max_size=4).map(b", ".join)
plain_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=16)
values = st.one_of(
    plain_values.map(str.encode), listed, st.binary(max_size=16),
    st.sampled_from([b"10.0.0.1", b"a\r\nX-Injected: 1", b"a\nb", b"\x00", b"\xff", KELVIN,
                     b"coo" + KELVIN + b"ie", b"\ttab", b"https"]),
)
identity_values = st.one_of(
    plain_values, st.sampled_from(["\r", "a\nb", "\udcff", "\u00e9t\u00e9", "\u212a", ""]))
identity_names = st.one_of(
    st.sampled_from(IDENTITY_NAMES),
    st.sampled_from(["X-Request-Id", "Host", "Content-Length", "X-Forwarded-For",
                     "X-Not-Configured", "x_user_id", "X-USER-ID", "X-\u212aey"]))


def both(fields: list[tuple[bytes, bytes]]) -> tuple[CIMultiDictProxy[str], list[Field]]:
    """The text the pipeline reads and the fields as bytes, as the front keeps them."""
    pairs, kept = [], []
    for name, value in fields:
        pair, field = field_text(name, name.lower(), value)
        pairs.append(pair)
        kept.append(field)
    return CIMultiDictProxy(CIMultiDict(pairs)), kept


def reference(hygiene: HeaderHygiene, key: Key, method: str, target: str,
              headers: CIMultiDictProxy[str], client_ip: str | None,
              identity: Sequence[tuple[str, str]], rid: str, length: int | None
              ) -> bytes | str:
    """request_head(upstream_pairs(...)), or its error as text."""
    pairs, lows = hygiene.upstream_pairs(headers, client_ip=client_ip, scheme="http",
                                         identity=identity, request_id=rid)
    try:
        return request_head(key, method, target, pairs, False, length, lows)
    except ValueError as exc:
        return repr(exc)


def printable(data: bytes) -> bool:
    return all(b == 9 or 0x20 <= b < 0x7F for b in data)


@settings(max_examples=1500, deadline=None)
@given(
    which=st.integers(0, len(BUILDERS) - 1),
    fields=st.lists(st.tuples(names, values), max_size=10),
    client_ip=st.sampled_from([None, "", "192.0.2.7", TRUSTED, "::1"]),
    identity=st.lists(st.tuples(identity_names, identity_values), max_size=5),
    rid=st.sampled_from(["a7b0ce9c4bcf7205ba29efe9ab25c5a0", "rid\r\n", "r\u00e9"]),
    method=st.sampled_from(["GET", "POST", "HEAD", "PATCH"]),
    length=st.sampled_from([None, 0, 5]),
    key=st.sampled_from([("127.0.0.1", 9), ("::1", 80), ("upstream", 80)]),
)
def test_bytes_head_is_the_reference(
    which: int, fields: list[tuple[bytes, bytes]], client_ip: str | None,
    identity: list[tuple[str, str]], rid: str, method: str, length: int | None, key: Key,
) -> None:
    hygiene, builder = HYGIENES[which], BUILDERS[which]
    headers, kept = both(fields)
    expected = reference(hygiene, key, method, "/a?b=1", headers, client_ip, identity, rid,
                         length)
    try:
        got: bytes | str = builder.head(key, method, "/a?b=1", kept, headers,
                                        client_ip=client_ip, scheme="http", identity=identity,
                                        request_id=rid, length=length)
    except ValueError as exc:
        got = repr(exc)
    assert got == expected
    plain = builder.plain(key, method, "/a?b=1", kept, headers, client_ip=client_ip,
                          scheme="http", identity=identity, request_id=rid, length=length)
    assert plain is None or plain == expected
    # As the front's memo and the verifier give them (tuples): the same, first and again
    # (then from the builder's memo of heads cut around the id).
    for _ in range(2):
        try:
            got = builder.head(key, method, "/a?b=1", tuple(kept), headers, client_ip,
                               "http", tuple(identity), rid, length)
        except ValueError as exc:
            got = repr(exc)
        assert got == expected
    # As the verifier gives it (a tuple, its lines remembered): the same, first and again.
    frozen = tuple(identity)
    for _ in range(2):
        again = builder.plain(key, method, "/a?b=1", kept, headers, client_ip=client_ip,
                              scheme="http", identity=frozen, request_id=rid, length=length)
        assert again == plain
    names_ = [name.lower() for name, _ in identity]
    if (all(printable(name) and printable(value) for name, value in fields)
            and all(name in IDENTITY_NAMES and printable(value.encode("utf-8", "replace"))
                    for name, value in identity)
            and len(set(names_)) == len(names_) and printable(rid.encode("utf-8", "replace"))
            and isinstance(expected, bytes)):
        assert plain is not None  # plain input: the bytes path answers by itself


@st.composite
def plain_spelled(draw: st.DrawFn) -> bytes:
    """A listed name in random case with `-` or `_` (printable ASCII only)."""
    return draw(spelled()).replace(KELVIN, b"k")


plain_listed = st.lists(plain_spelled(), max_size=4).map(b", ".join)
plain_fields = st.lists(st.tuples(st.one_of(plain_spelled(), st.just(b"Content-Length")),
                                  st.one_of(plain_values.map(str.encode), plain_listed)),
                        max_size=8)


@settings(max_examples=500, deadline=None)
@given(
    which=st.integers(0, len(BUILDERS) - 1),
    fields=plain_fields,
    client_ip=st.sampled_from([None, "192.0.2.7", TRUSTED]),
    identity=st.lists(st.tuples(st.sampled_from(IDENTITY_NAMES), plain_values), max_size=4,
                      unique_by=lambda pair: pair[0].lower()),
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT"]),
    length=st.sampled_from([None, 0, 7]),
)
def test_plain_input_takes_the_bytes_path_to_the_same_head(
    which: int, fields: list[tuple[bytes, bytes]], client_ip: str | None,
    identity: list[tuple[str, str]], method: str, length: int | None,
) -> None:
    """The common case, generated densely: printable fields (Content-Length, Connection lists,
    every spelling), configured identity names; the bytes path answers, with the same head."""
    headers, kept = both(fields)
    key = ("127.0.0.1", 8080)
    plain = BUILDERS[which].plain(key, method, "/p", kept, headers, client_ip=client_ip,
                                  scheme="https", identity=identity, request_id="rid-1",
                                  length=length)
    pairs, lows = HYGIENES[which].upstream_pairs(headers, client_ip=client_ip, scheme="https",
                                                 identity=identity, request_id="rid-1")
    assert plain == request_head(key, method, "/p", pairs, False, length, lows)


def test_a_usual_request_takes_the_bytes_path() -> None:
    headers, kept = both([(b"Host", b"app.test"), (b"user-agent", b"wrk"),
                          (b"X_User_Id", b"spoofed"), (b"Connection", b"keep-alive, X-Custom"),
                          (b"X-Custom", b"gone"), (b"Authorization", b"Bearer t")])
    builder = LeanHead(HYGIENES[0])
    heads = [builder.plain(("127.0.0.1", 9), "GET", "/a", kept, headers, client_ip="192.0.2.7",
                           scheme="http", identity=(("X-User-Id", "user_1"),),
                           request_id="rid", length=None)
             for _ in range(2)]  # the second with the Connection list remembered
    assert heads[0] == heads[1] == (
        b"GET /a HTTP/1.1\r\nUser-Agent: wrk\r\nAuthorization: Bearer t\r\n"
        b"X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: app.test\r\nHost: app.test\r\nX-User-Id: user_1\r\n"
        b"X-Request-Id: rid\r\n\r\n")


def test_identity_lines_are_remembered_per_identity_never_across() -> None:
    """The identity lines are kept per identity tuple: another tuple with the same names gets
    its own values, a list (which may change) is read every time, and a value that cannot go
    into the head takes the reference's path each time it is presented."""
    headers, kept = both([(b"Host", b"app.test")])
    builder = LeanHead(HYGIENES[0])

    def head(identity: Sequence[tuple[str, str]]) -> bytes | None:
        return builder.plain(("127.0.0.1", 9), "GET", "/", kept, headers, client_ip=None,
                             scheme="http", identity=identity, request_id="rid", length=None)

    alice, bob = (("X-User-Id", "user_alice"),), (("X-User-Id", "user_bob"),)
    for _ in range(2):
        assert b"X-User-Id: user_alice\r\n" in (head(alice) or b"")
        assert b"X-User-Id: user_bob\r\n" in (head(bob) or b"")
    changing = [("X-User-Id", "user_1")]
    assert b"X-User-Id: user_1\r\n" in (head(changing) or b"")
    changing[0] = ("X-User-Id", "user_2")
    assert b"X-User-Id: user_2\r\n" in (head(changing) or b"")
    for bad in ((("X-User-Id", "a\r\nX-Injected: 1"),), (("X-User-Id", "\udcff"),),
                (("X-User-Id", "\u00e9"),), (("X-Request-Id", "mine"),)):
        for _ in range(2):
            assert head(bad) is None  # the text path decides (and raises for CR LF)
    with pytest.raises(ValueError):
        builder.head(("127.0.0.1", 9), "GET", "/", kept, headers, client_ip=None,
                     scheme="http", identity=(("X-User-Id", "a\r\nX-Injected: 1"),),
                     request_id="rid", length=None)


def test_forwarded_lines_are_remembered_per_peer_and_host_never_for_a_trusted_peer() -> None:
    """The forwarded lines are kept per peer, scheme and Host: another Host or peer gets its
    own; a trusted proxy's X-Forwarded-* are read every time (its chain is the client's);
    a Host that cannot go into the head takes the reference's path each time."""
    builder = LeanHead(HYGIENES[2])

    def head(fields: list[tuple[bytes, bytes]], client_ip: str) -> bytes:
        headers, kept = both(fields)
        plain = builder.plain(("127.0.0.1", 9), "GET", "/", kept, headers, client_ip=client_ip,
                              scheme="http", identity=(), request_id="rid", length=None)
        assert plain is not None
        return plain

    for _ in range(2):
        assert b"X-Forwarded-Host: a.test\r\n" in head([(b"Host", b"a.test")], "192.0.2.7")
        assert b"X-Forwarded-Host: b.test\r\n" in head([(b"Host", b"b.test")], "192.0.2.7")
        assert b"X-Forwarded-For: 192.0.2.8\r\n" in head([(b"Host", b"a.test")], "192.0.2.8")
    for chain in (b"198.51.100.1", b"198.51.100.2"):
        assert (b"X-Forwarded-For: " + chain + b", " + TRUSTED.encode() + b"\r\n"
                in head([(b"Host", b"a.test"), (b"X-Forwarded-For", chain)], TRUSTED))
    long_host = b"h" * 300 + b".test"  # worked out each time, never kept
    for _ in range(2):
        assert b"X-Forwarded-Host: " + long_host + b"\r\n" in head([(b"Host", long_host)],
                                                                   "192.0.2.7")
    assert all(host is None or len(host) <= 255 for _, _, host in builder._forwarded)
    headers, kept = both([(b"Host", KELVIN)])
    for _ in range(2):
        assert builder.plain(("127.0.0.1", 9), "GET", "/", kept, headers, client_ip="192.0.2.7",
                             scheme="http", identity=(), request_id="rid", length=None) is None


def test_kelvin_sign_and_obs_text_take_the_text_path() -> None:
    """`Connection: coo\u212aie` names Cookie as text, and a `Coo\u212aie` header is Cookie as
    text (dropped when cookies are not forwarded): the text path decides, as the reference."""
    cases = [
        (0, [(b"Host", b"a"), (b"Connection", b"coo" + KELVIN + b"ie"), (b"Cookie", b"c=1")]),
        (1, [(b"Host", b"a"), (b"Coo" + KELVIN + b"ie", b"c=1")]),
        (0, [(b"Host", b"a"), (b"X-Custom", b"caf\xc3\xa9"), (b"Cookie", b"c=1")]),
    ]
    for which, fields in cases:
        headers, kept = both(fields)
        builder = BUILDERS[which]
        assert builder.plain(("u", 80), "GET", "/", kept, headers, client_ip=None,
                             scheme="http", identity=(), request_id="r", length=None) is None
        head = builder.head(("u", 80), "GET", "/", kept, headers, client_ip=None, scheme="http",
                            identity=(), request_id="r", length=None)
        assert head == reference(HYGIENES[which], ("u", 80), "GET", "/", headers, None, (),
                                 "r", None)
        assert (b"c=1" in head) == (fields[1][0] == b"X-Custom")


class _Captured(FrontProtocol):
    """A front that records what it parsed instead of serving it."""

    seen: list[tuple[list[tuple[str, str]], list[Field]]]

    def _request(self, method: str, target: str, headers: CIMultiDictProxy[str],
                 version: str, keep_alive: bool) -> None:
        self.seen.append((list(headers.items()), list(self._fields)))


token = st.text(st.sampled_from("abcXYZ-_!#$%&'*+.^`|~09"), min_size=1, max_size=10)
field_value = st.binary(max_size=12).map(
    lambda b: bytes(c for c in b if c == 9 or 0x20 <= c < 0x7F or c >= 0x80).strip(b" \t"))


@settings(max_examples=200, deadline=None)
@given(fields=st.lists(st.tuples(token, field_value), max_size=6))
def test_the_front_keeps_what_field_text_gives(fields: list[tuple[str, bytes]]) -> None:
    """on_header keeps the text and the bytes field_text() gives."""
    raw = [(name.encode(), value) for name, value in fields
           if name.lower() not in ("content-length", "transfer-encoding", "host", "upgrade")]

    async def parse() -> list[tuple[list[tuple[str, str]], list[Field]]]:
        metrics = Metrics(CollectorRegistry())
        door = FrontDoor(metrics, metrics.proxy_fast_path, HANDOVER_CAUSES,
                         max_head_bytes=65536, max_headers=100, head_timeout=0,
                         keepalive_timeout=0)
        front = _Captured(door, lambda: asyncio.Protocol())
        front.seen = []
        front.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n"
                            + b"".join(n + b": " + v + b" \r\n" for n, v in raw) + b"\r\n")
        return front.seen

    expected = [field_text(n, n.lower(), v) for n, v in [(b"Host", b"h"), *raw]]
    assert asyncio.run(parse()) == [([p for p, _ in expected], [f for _, f in expected])]


async def test_through_the_fast_door_the_upstream_gets_the_bytes_or_the_same_refusal(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    """Plain headers, UTF-8 and undecodable obs-text through the real fast door: the first
    two arrive byte for byte (the bytes path, then the text path), the last is refused with
    400 as the text path refuses it, and every request stays in the fast door."""
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url})
    port = gw.client.server.port
    assert port is not None
    token = clerk.token()
    assert (await gw.get("/warm", token)).status == 200

    def request(value: bytes) -> bytes:
        return (b"GET /api HTTP/1.1\r\nHost: app.test\r\nX_User_Id: spoofed\r\nAuthorization: "
                b"Bearer " + token.encode() + b"\r\nX-Custom: " + value
                + b"\r\nConnection: close\r\n\r\n")

    for value in (b"plain\tvalue", b"caf\xc3\xa9"):
        assert status_of(await raw_request(port, request(value))) == 200
        seen = upstream.seen[-1]
        assert seen.values("X-Custom") == [value.decode("latin-1")]
        assert [n for n, _ in seen.headers if n.lower().replace("_", "-") == "x-user-id"] == [
            "X-User-Id"]
    reply = await raw_request(port, request(b"\xff"))
    assert status_of(reply) == 400 and b"malformed_request" in reply
    gw.gateway.metrics.flush()
    handed = [sample for metric in gw.gateway.registry.collect() for sample in metric.samples
              if sample.name == "clerk_gateway_proxy_fast_path_total"
              and sample.labels["result"] not in ("answered", "answered_after_io")]
    assert sum(sample.value for sample in handed) == 0


def test_a_head_cut_around_the_id_gives_the_head_for_every_usable_id() -> None:
    builder = BUILDERS[0]
    headers, kept = both([(b"Host", b"app.test"), (b"Accept", b"*/*")])
    args = (("127.0.0.1", 9), "GET", "/a", tuple(kept), headers, "192.0.2.7", "http",
            (("X-User-Id", "user_1"),))
    around = builder.around(*args, None)
    assert around is not None and around[0].endswith(b"\r\nX-Request-Id: ")
    for rid in ("first-id-0001", "a7b0ce9c4bcf7205ba29efe9ab25c5a0", "tab\tid"):
        assert usable_id(rid)
        assert b"".join((around[0], rid.encode(), around[1])) == builder.head(*args, rid, None)
    for rid in ("r\u00e9", "rid\r\n", "\udcff"):
        assert not usable_id(rid)
