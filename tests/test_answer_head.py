"""The header lists both proxy paths build without a multidict behave as a CIMultiDict would,
and the response head refuses what aiohttp's writer refuses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.http.answer_head import client_head, encode_head
from gateway.http.hop import end_to_end, put

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
