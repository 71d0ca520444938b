"""Path normalisation: RFC 3986 decoding and dot-segment removal, ambiguous paths refused."""

from __future__ import annotations

import re
import string
import unicodedata
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pathnorm import MAX_PATH_ESCAPES, MAX_PATH_SEGMENTS, AmbiguousPath, normalize_path


@pytest.mark.parametrize(("raw", "normal"), [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/b/", "/a/b/"),
    ("/a/b?x=1&y=/../", "/a/b"),
    ("/admin/../admin", "/admin"),
    ("//admin", "/admin"),
    ("/a//b///c", "/a/b/c"),
    ("/./a/./b/.", "/a/b/"),
    ("/a/b/..", "/a/"),
    ("/a/..", "/"),
    ("/../../a", "/a"),
    ("/%61dmin", "/admin"),
    ("/%41%5a%30%39%2D%2E%5F%7E", "/AZ09-._~"),
    ("/public/%2e%2e/admin", "/admin"),
    ("/public/%2E%2e/admin", "/admin"),
    ("/public/.%2e/admin", "/admin"),
    ("/public/%2e/admin", "/public/admin"),
    ("/x%c3%a9", "/x%C3%A9"),  # not unreserved: kept, hex upper-cased
    ("/a%20b", "/a%20b"),
    ("/a%2b%40%3a", "/a%2B%40%3A"),  # reserved characters stay encoded
    ("/caf%c3%a9/%E2%80%A6", "/caf%C3%A9/%E2%80%A6"),  # UTF-8 kept, "…" is no dot segment
    ("/a%41%c3%a9%2b", "/aA%C3%A9%2B"),  # decoded and kept escapes mixed
    ("/a=%3d%3D=", "/a=%3D%3D="),  # a raw `=` is not an escape
    ("/%5B%5d%40%3a%21%24%26%27%28%29%2A%2C", "/%5B%5D%40%3A%21%24%26%27%28%29%2A%2C"),
    ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
    ("/ADMIN", "/ADMIN"),  # case is kept: matching is case-sensitive by default
    ("/a/...", "/a/..."),  # three dots is a name, not a dot segment
])
def test_normal_form(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize("raw", [
    "/public/..%2Fadmin",  # encoded slash
    "/public/..%2fadmin",
    "/a%5Cb",  # encoded backslash
    "/a\\b",  # raw backslash
    "/a%00",  # encoded NUL
    "/a\x00b",  # raw NUL
    "/a%0Ab", "/a%0d", "/a%09", "/a%7f", "/a%1F",  # encoded controls
    "/a\tb", "/a\nb", "/a\x7f",  # raw controls
    "/a b",  # raw space
    "/é", "/a\u2215b", "/\uff0e\uff0e/admin",  # non-ASCII (incl. look-alike slash and dots)
    "/admin;x=y", "/public/..;/admin",  # matrix parameters
    "/admin%3bx", "/admin%3B",
    "/a#frag",  # never valid in a request target
    "/%252e%252e/admin", "/%252F",  # double encoding
    "/public/%25%32%65%25%32%65/admin", "/%25%32%66", "/%25%35%63",  # ... of decoded escapes
    "/%25", "/100%25", "/%2541",  # any encoded percent: one more decoding makes an escape
    "/a%3Fb", "/a%3f", "/a%23b",  # one more decoding would end the path there
    "/%C0%AE%C0%AE/admin", "/%C0%AF", "/%E0%80%AE", "/%ED%A0%80", "/%C3", "/%C3a%A9",  # no UTF-8
    "/%EF%BC%8F", "/a%EF%BC%8Fb", "/%EF%BC%BC",  # fullwidth / and \ fold to / and \
    "/%EF%BC%8E%EF%BC%8E/admin", "/%E2%80%A5/admin", "/x/%EF%BC%8E",  # fold to a dot segment
    "/%EF%BC%85%32%65", "/%EF%BC%9F", "/%EF%BC%83", "/%EF%BC%9B",  # fold to % ? # ;
    "/%C2%85", "/%C2%9F",  # C1 control characters
    "/%", "/%4", "/%zz", "/%g0", "/%-1",  # invalid escapes
    "", "admin", "*", "http://host/admin", "?x=1",  # not a path starting with /
])
def test_ambiguous_paths_are_refused(raw: str) -> None:
    with pytest.raises(AmbiguousPath):
        normalize_path(raw)


def test_too_many_escapes_are_refused_before_decoding() -> None:
    assert normalize_path("/" + "%41" * MAX_PATH_ESCAPES) == "/" + "A" * MAX_PATH_ESCAPES
    with pytest.raises(AmbiguousPath, match="percent-escapes"):
        normalize_path("/" + "%41" * (MAX_PATH_ESCAPES + 1))
    with pytest.raises(AmbiguousPath, match="percent-escapes"):
        normalize_path("/%41%41%41", max_escapes=2)
    assert normalize_path("/%41%41%41?%41%41", max_escapes=3) == "/AAA"  # the query is not


def test_too_many_segments_are_refused() -> None:
    assert normalize_path("/a" * MAX_PATH_SEGMENTS) == "/a" * MAX_PATH_SEGMENTS
    with pytest.raises(AmbiguousPath, match="segments"):
        normalize_path("/a" * (MAX_PATH_SEGMENTS + 1))
    with pytest.raises(AmbiguousPath, match="segments"):
        normalize_path("/" * 9, max_segments=8)
    assert normalize_path("/a/b?/c/d/e", max_segments=2) == "/a/b"


_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PATH_CHARS = st.sampled_from([
    *"abAB09-._~/%;:@!$&'()*+,=", "..", ".", "%2e", "%2E", "%2f", "%41", "%c3", "%25", "//",
])


# Pieces that combine into the tricks of the class: escapes of escapes, of separators, of
# dots, overlong and fullwidth forms, lower and upper case, raw separators and dots.
_TRICKY_PARTS = st.sampled_from([
    "/", ".", "..", "a", "Z", "0", "=", "%", "%25", "%32", "%65", "%45", "%66", "%46", "%63",
    "%35", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%3f", "%23", "%3b", "%00", "%41", "%61",
    "%7e", "%c3", "%a9", "%C3%A9", "%c0%ae", "%c0%af", "%e0%80%ae", "%ef%bc%8f", "%EF%BC%8E",
    "%e2%80%a5", "%ef%bc%85", "%20", "%2b", "%40", "%3a", "+", ":", "@", "~", "%%", "%g",
])


def _one_more_decoding(path: str) -> str:
    """What an upstream that percent-decodes once more (and folds compatibility forms) reads."""
    return unicodedata.normalize("NFKC", unquote(path, errors="strict"))


def _assert_fixpoint_and_unambiguous(raw: str) -> None:
    try:
        normal = normalize_path(raw)
    except AmbiguousPath:
        return
    assert normal.startswith("/")
    assert normalize_path(normal) == normal  # a fixpoint: the upstream sees what was matched
    segments = normal.split("/")[1:]
    assert "." not in segments and ".." not in segments and "//" not in normal
    assert not re.search(r"%(25|2[EeFf]|5[Cc]|3[BbFf]|23|[01][0-9A-Fa-f]|7[Ff])", normal)
    assert not re.search(r"%[0-9A-F]?[a-f]", normal)  # kept escapes are upper case
    assert not re.search(r"%(3[0-9]|[46][1-9A-F]|[57][0-9A]|2D|5F|7E)", normal)  # decoded
    further = _one_more_decoding(normal)
    assert further.count("/") == normal.count("/")  # no new segment
    further_segments = further.split("/")[1:]
    assert "." not in further_segments and ".." not in further_segments
    assert not re.search(r"[%\\?#;\x00-\x1f\x7f-\x9f]", further)


@given(st.lists(_TRICKY_PARTS, max_size=24).map(lambda parts: "/" + "".join(parts)))
def test_accepted_paths_are_fixpoints_that_one_more_decoding_cannot_change(raw: str) -> None:
    _assert_fixpoint_and_unambiguous(raw)


@given(st.lists(_PATH_CHARS, max_size=30).map(lambda parts: "/" + "".join(parts)))
def test_normal_form_is_stable_and_dot_free(raw: str) -> None:
    _assert_fixpoint_and_unambiguous(raw)


@given(st.binary(max_size=64).map(lambda data: "/" + data.decode("latin-1")))
def test_arbitrary_bytes_are_normal_or_refused(raw: str) -> None:
    _assert_fixpoint_and_unambiguous(raw)


@given(st.text(max_size=64).map(lambda text: "/" + text))
def test_arbitrary_text_is_normal_or_refused(raw: str) -> None:
    _assert_fixpoint_and_unambiguous(raw)


@given(st.lists(_TRICKY_PARTS, max_size=24).map(lambda parts: "/" + "".join(parts)))
def test_normal_form_is_the_escape_by_escape_rule(raw: str) -> None:
    """The byte-counting shortcuts agree with decoding escape by escape (RFC 3986 6.2.2)."""
    try:
        normal = normalize_path(raw)
    except AmbiguousPath:
        return
    decoded = re.sub(r"%[0-9A-Fa-f]{2}", lambda m: (
        chr(int(m[0][1:], 16)) if chr(int(m[0][1:], 16)) in _UNRESERVED else m[0].upper()),
        raw.partition("?")[0])
    segments: list[str] = []
    for segment in decoded.split("/")[1:]:
        if segment == "..":
            segments[-1:] = []
        elif segment not in ("", "."):
            segments.append(segment)
    expected = "/" + "/".join(segments)
    if segments and decoded.split("/")[-1] in ("", ".", ".."):
        expected += "/"
    assert normal == expected
