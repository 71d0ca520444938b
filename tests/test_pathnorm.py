"""Path normalisation: RFC 3986 decoding and dot-segment removal, ambiguous paths refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pathnorm import AmbiguousPath, normalize_path


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
    ("/100%25", "/100%25"),  # an encoded percent not followed by hex digits
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
    "/%", "/%4", "/%zz", "/%g0", "/%-1",  # invalid escapes
    "", "admin", "*", "http://host/admin", "?x=1",  # not a path starting with /
])
def test_ambiguous_paths_are_refused(raw: str) -> None:
    with pytest.raises(AmbiguousPath):
        normalize_path(raw)


_PATH_CHARS = st.sampled_from([
    *"abAB09-._~/%;:@!$&'()*+,=", "..", ".", "%2e", "%2E", "%2f", "%41", "%c3", "%25", "//",
])


@given(st.lists(_PATH_CHARS, max_size=30).map(lambda parts: "/" + "".join(parts)))
def test_normal_form_is_stable_and_dot_free(raw: str) -> None:
    try:
        normal = normalize_path(raw)
    except AmbiguousPath:
        return
    assert normal.startswith("/")
    assert normalize_path(normal) == normal  # idempotent: the upstream sees what was matched
    segments = normal.split("/")[1:]
    assert "." not in segments and ".." not in segments
    assert "//" not in normal
    assert "%2E" not in normal and "%41" not in normal  # unreserved escapes are decoded
