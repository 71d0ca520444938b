"""The header lists the proxy builds without a multidict are the ones a CIMultiDict would
hold, and the response head refuses what aiohttp's writer refuses."""

from __future__ import annotations

from aiohttp import hdrs
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import load_settings
from gateway.cors import CorsPolicy
from gateway.http.answer_head import client_head, encode_head
from gateway.http.hop import HeaderHygiene, connection_tokens, end_to_end, normalize_name, put
from gateway.http.raw_head import RawPairs, client_head_raw, raw_head
from gateway.pipeline import Decision
from gateway.reasons import Reason
from gateway.routing import Route

DATE = b"Date: Wed, 02 Dec 2026 12:00:00 GMT\r\n"
names = st.sampled_from(["A", "a", "X-Request-Id", "x-request-id", "Content-Length",
                         "content-length", "Connection", "Keep-Alive", "X-Drop", "x_drop",
                         "\u212aey", "key", "Date", "Server"])
pairs = st.lists(st.tuples(names, st.sampled_from(["1", "x-drop", "close, X-Drop", "v"])),
                 max_size=8)


@given(pairs=pairs, name=names, value=st.sampled_from(["r", "s"]))
def test_put_is_a_multidict_set(pairs: list[tuple[str, str]], name: str, value: str) -> None:
    expected = CIMultiDict(pairs)
    expected[name] = value
    got = list(pairs)
    lows = [key.lower() for key, _ in got]
    put(got, lows, name, value)
    assert got == list(expected.items())
    assert lows == [key.lower() for key, _ in got]


@given(pairs=pairs)
def test_end_to_end_drops_hop_by_hop_and_connection_named_headers(
        pairs: list[tuple[str, str]]) -> None:
    headers = CIMultiDict(pairs)
    named = {token.strip().lower().replace("_", "-")
             for value in headers.getall("Connection", ()) for token in value.split(",")}
    expected = [(k, v) for k, v in pairs
                if k.lower() not in {"connection", "keep-alive"} | named]
    assert end_to_end(pairs) == expected


def test_a_control_character_or_a_stray_line_end_in_a_header_is_refused() -> None:
    for value in ("a\x7fb", "a\x00b", "a\rb", "a\nb", "a\r\nInjected: 1"):
        assert encode_head(200, "OK", [("X", value)], keep_alive=True, date=DATE) is None
    assert encode_head(200, "Bad\rReason", [], keep_alive=True, date=DATE) is None
    for value in ("a\tb", "caf\u00e9", "caf\udcc3"):  # a tab, UTF-8, undecodable (dropped)
        assert encode_head(200, "OK", [("X", value)], keep_alive=True, date=DATE) is not None


def test_the_head_frames_the_body_as_the_aiohttp_door_does() -> None:
    def head(status: int, upstream: list[tuple[str, str]], length: int | None,
             body: bytes | None, method: str = "GET") -> tuple[bytes, bool]:
        built = client_head(status, "OK", upstream, length=length, body=body, method=method,
                            rid="rid-0001", keep_alive=False, date=DATE, cors=None,
                            decision=None, request_headers={})
        assert built is not None
        return built

    data, chunked = head(200, [("x-request-id", "theirs"), ("Content-Length", "011")], 11,
                         b"hello world")
    assert data.startswith(b"HTTP/1.1 200 OK\r\nX-Request-Id: rid-0001\r\n"
                           b"Content-Length: 11\r\nContent-Type: application/octet-stream\r\n")
    assert data.endswith(b"Connection: close\r\n\r\nhello world") and not chunked
    data, chunked = head(200, [("Transfer-Encoding", "chunked")], None, None)
    assert b"Transfer-Encoding: chunked\r\n" in data and chunked
    data, chunked = head(204, [("Content-Length", "5")], 5, None)
    assert b"Content-Length" not in data and not chunked
    data, chunked = head(200, [("Content-Length", "5")], 5, None, "HEAD")
    assert b"Content-Length: 5\r\n" in data and b"Content-Type" not in data and not chunked


HYGIENE = HeaderHygiene(load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                                       "GATEWAY_UPSTREAM": "http://127.0.0.1:9"}))
header_names = st.sampled_from(["Accept", "accept", "X-Custom", "X-User-Id", "x_user_id",
                                "X-Forwarded-Host", "Host", "X-Request-Id", "Connection",
                                "X-Drop", "Cookie"])


def reference(headers: CIMultiDictProxy[str], identity: list[tuple[str, str]]
              ) -> list[tuple[str, str]]:
    """The upstream headers as a CIMultiDict builds them (every set replaces in place)."""
    named = connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        key = normalize_name(name)
        if key in HYGIENE._dropped or key in named or key.startswith(HYGIENE._prefixes):
            continue
        out.add(name, value)
    out["X-Forwarded-For"] = "192.0.2.7"
    out["X-Forwarded-Proto"] = "http"
    if hdrs.HOST in headers:
        out["X-Forwarded-Host"] = headers[hdrs.HOST]
        if HYGIENE._preserve_host:
            out[hdrs.HOST] = headers[hdrs.HOST]
    for name, value in identity:
        out[name] = value
    out["X-Request-Id"] = "req-00000001"
    return list(out.items())


@given(client=st.lists(st.tuples(header_names, st.sampled_from(["a", "x-drop", "b"])),
                       max_size=6),
       identity=st.lists(st.tuples(header_names, st.sampled_from(["u", "v"])), max_size=4))
def test_upstream_pairs_are_the_multidict_headers(client: list[tuple[str, str]],
                                                  identity: list[tuple[str, str]]) -> None:
    """Also when identity names repeat or meet the forwarded ones (the slower path)."""
    headers = CIMultiDictProxy(CIMultiDict(client))
    got, lows = HYGIENE.upstream_pairs(headers, client_ip="192.0.2.7", scheme="http",
                                       identity=identity, request_id="req-00000001")
    assert got == reference(headers, identity)
    assert lows == [name.lower() for name, _ in got]


# ------------------------------------------------------------ the head built from raw bytes

ORIGIN = "https://app.example.com"
_CORS_ON = CorsPolicy(load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                                     "CLERK_AUTHORIZED_PARTIES": ORIGIN}).cors)
_CORS_OFF = CorsPolicy(load_settings({"CLERK_ISSUER": "https://clerk.example.com"}).cors)
_DECISION = Decision(reason=Reason.OK, route=Route("default"))
KELVIN = "\u212a".encode()  # K (U+212A): str.lower() makes it an ASCII "k"
_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10)
_tokens = st.text("abcxyzABC-_", min_size=1, max_size=6).map(str.encode)
# Printable ASCII (the bytes path's to answer) and hostile (the str path's) pieces.
listed_names = st.sampled_from([b"key", b"Key", b"x-drop", b"X-Drop", b"x_drop", b"Date",
                                b"Server", b"Content-Length", b"Content-Type", b"X-Request-Id"])
clean_names = st.one_of(st.sampled_from([
    b"X-Request-Id", b"x-request-id", b"X-REQUEST-ID", b"Content-Length", b"content-length",
    b"Content-Type", b"Date", b"date", b"Server", b"SERVER", b"Connection", b"connection",
    b"Keep-Alive", b"Transfer-Encoding", b"Trailer", b"Upgrade", b"Vary",
]), listed_names, _tokens)
listing_values = st.sampled_from([  # `Connection` values naming some of listed_names
    b"key", b"close, X-Drop", b"x_drop", b" X-Custom , key ,", b"Date, Server", b"close",
    b"Content-Length, Content-Type, X-Request-Id", b"keep-alive", b"Keep-Alive, ,upgrade",
    b"X_DROP,content_type", b"x_request_id",
])
clean_values = st.one_of(st.sampled_from([b"0", b"5", b"31", b"v", b""]), listing_values,
                         _printable.map(str.encode))
hostile_names = st.one_of(st.sampled_from([
    KELVIN + b"ey", KELVIN + b"eep-Alive", b"caf\xc3\xa9", b"\xff", b"\x00", b"X\rY", b"X\nY",
    b"", b"X-Tab\t",
]), st.binary(max_size=12))
# `Connection` values whose tokens are names only after str.strip() or str.lower().
text_only_tokens = st.sampled_from([KELVIN + b"ey", b"close, " + KELVIN + b"ey", b"\xc2\xa0key",
                                    b"\x1ckey", b"x-drop\x1f", b"\x0bkey", b"\tkey"])
hostile_values = st.one_of(text_only_tokens, st.sampled_from([
    b"a\rb", b"a\nb", b"a\r\nInjected: 1", b"\x00", b"\x7f", b"\xff", b"caf\xc3\xa9",
]), st.binary(max_size=16))
clean_pairs = st.tuples(clean_names, clean_values)
any_pairs = st.one_of(clean_pairs, st.tuples(st.one_of(clean_names, hostile_names),
                                             st.one_of(clean_values, hostile_values)))
clean_reasons = st.one_of(st.sampled_from([b"OK", b"", b"a\tb", b" Spaced "]),
                          _printable.map(str.encode))
hostile_reasons = st.one_of(st.sampled_from([b"Bad\rReason", b"\xff", b"Caf\xc3\xa9"]),
                            st.binary(max_size=8))
clean_ids = st.sampled_from(["rid-0001", "df131bf6474da808d83cb45d72e3dedb"])
hostile_ids = st.sampled_from(["caf\u00e9", "\udcff", "a\r\nb"])


@st.composite
def listing_heads(draw: st.DrawFn, values: st.SearchStrategy[bytes]) -> RawPairs:
    """Clean headers, some named by a `Connection` header with one of `values`."""
    pairs = draw(st.lists(clean_pairs, max_size=4))
    pairs += [(b"Connection", draw(values)), (draw(listed_names), b"1")]
    return draw(st.permutations(pairs))


@st.composite
def upstream_heads(draw: st.DrawFn) -> tuple[bytes, RawPairs, str]:
    """A reason, headers and request id: printable ASCII throughout (the bytes path answers),
    or so but for one hostile piece (it must give way), or hostile anywhere."""
    reason = draw(clean_reasons)
    upstream = draw(st.one_of(st.lists(clean_pairs, max_size=6), listing_heads(listing_values)))
    rid = draw(clean_ids)
    spoil = draw(st.sampled_from(["reason", "name", "value", "id", "listing", "any"])
                 if draw(st.booleans()) else st.just("none"))
    at = draw(st.integers(0, len(upstream)))
    if spoil == "reason":
        reason = draw(hostile_reasons)
    elif spoil == "name":
        upstream.insert(at, (draw(hostile_names), draw(clean_values)))
    elif spoil == "value":
        upstream.insert(at, (draw(clean_names), draw(hostile_values)))
    elif spoil == "id":
        rid = draw(hostile_ids)
    elif spoil == "listing":
        upstream = draw(listing_heads(text_only_tokens))
    elif spoil == "any":
        reason = draw(st.one_of(clean_reasons, hostile_reasons))
        upstream = draw(st.lists(any_pairs, max_size=8))
        rid = draw(st.one_of(clean_ids, hostile_ids))
    return reason, upstream, rid


corses = st.sampled_from([(None, None), (_CORS_OFF, _DECISION), (_CORS_ON, None),
                          (_CORS_ON, _DECISION)])


def decoded(upstream: RawPairs) -> list[tuple[str, str]]:
    """The pairs as the str path gets them (the upstream's bytes, decoded as aiohttp does)."""
    return [(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in upstream]


@given(status=st.one_of(st.sampled_from([200, 204, 304, 404]), st.integers(100, 999)),
       head=upstream_heads(), method=st.sampled_from(["GET", "HEAD", "POST"]),
       length=st.one_of(st.none(), st.integers(0, 40)),
       body=st.one_of(st.none(), st.binary(max_size=12)),
       keep_alive=st.booleans(), cors=corses, origin=st.sampled_from([ORIGIN, "", "https://x"]))
@example(status=200, head=(b"OK", [(b"Connection", KELVIN + b"ey"), (b"key", b"1")], "rid-1"),
         method="GET", length=0, body=None, keep_alive=True, cors=(None, None), origin="")
@example(status=200, head=(b"OK", [(b"Connection", b"\x1ckey"), (b"key", b"1")], "rid-1"),
         method="GET", length=0, body=None, keep_alive=True, cors=(None, None), origin="")
@example(status=200, head=(b"OK", [(KELVIN + b"eep-Alive", b"1")], "rid-1"), method="GET",
         length=0, body=None, keep_alive=True, cors=(None, None), origin="")
@example(status=200, head=(b"OK", [(b"Access-Control-Allow-Origin", b"*")], "rid-1"),
         method="GET", length=0, body=None, keep_alive=True, cors=(_CORS_ON, _DECISION),
         origin=ORIGIN)  # CORS on: the str path's (the gateway's CORS headers, not the app's)
@example(status=200, head=(b"OK", [(b"X-Split", b"a\r\nInjected: 1")], "rid-1"),
         method="GET", length=0, body=None, keep_alive=True, cors=(None, None), origin="")
@example(status=200, head=(b"OK", [(b"X-Bin", b"a\xffb")], "rid-1"), method="GET", length=0,
         body=None, keep_alive=True, cors=(None, None), origin="")  # the str path drops \xff
@example(status=200, head=(b"Bad\rReason", [], "rid-1"), method="GET", length=0, body=None,
         keep_alive=True, cors=(None, None), origin="")  # both refused: None
@example(status=304, head=(b"Not Modified", [(b"Content-Length", b"5")], "rid-1"),
         method="GET", length=5, body=None, keep_alive=True, cors=(None, None), origin="")
def test_the_head_from_raw_bytes_is_the_str_paths_head(
        status: int, head: tuple[bytes, RawPairs, str], method: str, length: int | None,
        body: bytes | None, keep_alive: bool, cors: tuple[CorsPolicy | None, Decision | None],
        origin: str) -> None:
    """Byte for byte, a refusal (None) included, whatever the upstream sent."""
    reason, upstream, rid = head
    policy, decision = cors
    request_headers = {"Origin": origin} if origin else {}
    expected = client_head(status, reason.decode("utf-8", "surrogateescape"), decoded(upstream),
                           length=length, body=body, method=method, rid=rid,
                           keep_alive=keep_alive, date=DATE, cors=policy, decision=decision,
                           request_headers=request_headers)
    assert client_head_raw(status, reason, list(upstream), length=length, body=body,
                           method=method, rid=rid, keep_alive=keep_alive, date=DATE,
                           cors=policy, decision=decision,
                           request_headers=request_headers) == expected
    built = raw_head(status, reason, list(upstream), length=length, body=body, method=method,
                     rid=rid, keep_alive=keep_alive, date=DATE)
    if built is not None and (policy is None or not policy.enabled or decision is None):
        assert built == expected  # what the fast path answers itself is the str path's


@given(upstream=st.one_of(st.lists(clean_pairs, max_size=8), listing_heads(listing_values)),
       status=st.sampled_from([200, 204, 304, 404]), method=st.sampled_from(["GET", "HEAD"]),
       length=st.one_of(st.none(), st.integers(0, 40)),
       body=st.one_of(st.none(), st.binary(max_size=12)), keep_alive=st.booleans())
def test_a_printable_ascii_head_is_built_from_bytes(
        upstream: RawPairs, status: int, method: str, length: int | None,
        body: bytes | None, keep_alive: bool) -> None:
    """The fast path answers the usual heads itself (no fallback), with the str path's bytes."""
    built = raw_head(status, b"Whatever It Is", upstream, length=length, body=body,
                     method=method, rid="rid-0001", keep_alive=keep_alive, date=DATE)
    assert built is not None
    assert built == client_head(status, "Whatever It Is", decoded(upstream), length=length,
                                body=body, method=method, rid="rid-0001",
                                keep_alive=keep_alive, date=DATE, cors=None, decision=None,
                                request_headers={})


@given(upstream=listing_heads(text_only_tokens), status=st.sampled_from([200, 204, 304]),
       length=st.one_of(st.none(), st.integers(0, 40)), keep_alive=st.booleans())
def test_connection_tokens_that_are_names_only_as_text_drop_them_as_the_str_path_does(
        upstream: RawPairs, status: int, length: int | None, keep_alive: bool) -> None:
    """The head is otherwise clean: only the `Connection` rule keeps the bytes path out."""
    expected = client_head(status, "OK", decoded(upstream), length=length, body=None,
                           method="GET", rid="rid-0001", keep_alive=keep_alive, date=DATE,
                           cors=None, decision=None, request_headers={})
    assert client_head_raw(status, b"OK", upstream, length=length, body=None, method="GET",
                           rid="rid-0001", keep_alive=keep_alive, date=DATE, cors=None,
                           decision=None, request_headers={}) == expected


def test_a_connection_token_that_lowers_to_ascii_only_as_text_goes_the_str_way() -> None:
    """`Connection: \u212aey` drops `key` in the str path (its token lowers to "key"): the
    bytes path cannot tell, so it does not answer, and the str path's answer is given."""
    upstream = [(b"Connection", KELVIN + b"ey"), (b"key", b"secret"), (b"X-Kept", b"1")]
    assert raw_head(200, b"OK", upstream, length=0, body=None, method="GET", rid="rid-0001",
                    keep_alive=True, date=DATE) is None
    built = client_head_raw(200, b"OK", upstream, length=0, body=None, method="GET",
                            rid="rid-0001", keep_alive=True, date=DATE, cors=None,
                            decision=None, request_headers={})
    assert built is not None
    assert b"secret" not in built[0] and b"X-Kept: 1\r\n" in built[0]


def test_an_nginx_answer_with_a_small_body_is_built_from_bytes() -> None:
    upstream = [(b"Server", b"nginx/1.22.1"), (b"Date", b"Wed, 02 Dec 2026 15:00:00 GMT"),
                (b"Content-Type", b"application/json"), (b"Content-Length", b"2"),
                (b"Connection", b"keep-alive"), (b"X-Request-Id", b"spoofed"),
                (b"X-Tab", b"a\tb")]  # a tab is fine in a value (not in `Connection`)
    built = raw_head(200, b"OK", upstream, length=2, body=b"{}", method="GET",
                     rid="rid-0001", keep_alive=True, date=DATE)
    assert built == (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
                     b"Date: Wed, 02 Dec 2026 15:00:00 GMT\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                     b"X-Request-Id: rid-0001\r\nX-Tab: a\tb\r\n\r\n{}", False)
