"""The header lists the proxy builds without a multidict are the ones a CIMultiDict would
hold, and the response head refuses what aiohttp's writer refuses."""

from __future__ import annotations

from aiohttp import hdrs
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import load_settings
from gateway.http.answer_head import client_head, encode_head
from gateway.http.hop import HeaderHygiene, connection_tokens, end_to_end, normalize_name, put

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
