"""Token sources other parsers read differently are refused, through every door.

The one form read is `Authorization: Bearer SP <token>` and a single `__session` cookie
(gateway/auth/extract.py, gateway/auth/cookies.py). A value another common reader would
take as the token in another form, a second copy, a second Cookie header or a cookie name
another reader folds onto `__session` is `400 ambiguous_token`, never the next source or
anonymous access; bytes no token is made of are `401 malformed_token`, never a 500. Each
case goes as raw bytes to the forward-auth fast door, the aiohttp door and both proxy doors.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.cookies import CookieReader, MalformedCookie, UnclearCookie
from gateway.auth.extract import visible_ascii
from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory
from tests.door_support import DOORS, Doors, exchange, head, three_doors
from tests.proxy_support import Upstream

ROUTES: dict[str, Any] = {"routes": [
    {"name": "public", "path_prefix": "/public", "access": "public"},
    {"name": "maybe", "path_prefix": "/maybe", "access": "optional"},
]}


@pytest.fixture
async def doors(clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream) -> Doors:
    """Forward-auth with and without its fast door, and the proxy through each of its doors."""
    return await three_doors(clerk, make_gateway, upstream, ROUTES)


# name -> (header lines with {t} for a valid token and {o} for another, status, reason)
REFUSED: dict[str, tuple[list[str], int, str]] = {
    "bearer_tab": (["Authorization: Bearer\t{t}"], 400, "ambiguous_token"),
    "bearer_two_spaces": (["Authorization: Bearer  {t}"], 400, "ambiguous_token"),
    "bearer_no_break_space": (["Authorization: Bearer\u00a0{t}"], 400, "ambiguous_token"),
    "bearer_byte_order_mark": (["Authorization: Bearer\ufeff{t}"], 400, "ambiguous_token"),
    # Refused by the HTTP parser already (a control character in a header value).
    "bearer_vertical_tab": (["Authorization: Bearer\x0b{t}"], 400, "malformed_request"),
    "bearer_trailing_word": (["Authorization: Bearer {t} {o}"], 400, "ambiguous_token"),
    "bearer_tab_inside": (["Authorization: bearer {t}\tx"], 400, "ambiguous_token"),
    "bearer_tab_with_a_valid_cookie": (
        ["Authorization: Bearer\t{t}", "Cookie: __session={o}"], 400, "ambiguous_token"),
    "bearer_only": (["Authorization: Bearer"], 401, "malformed_token"),
    "two_session_cookies": (["Cookie: __session={t}; __session={o}"], 400, "ambiguous_token"),
    "two_equal_session_cookies": (["Cookie: __session={t}; a=1; __session={t}"], 400,
                                  "ambiguous_token"),
    "two_cookie_headers": (["Cookie: __session={t}", "Cookie: a=1"], 400, "ambiguous_token"),
    "two_cookie_headers_one_copy_each": (["Cookie: a=1", "Cookie: __session={t}"], 400,
                                         "ambiguous_token"),
    "upper_case_name": (["Cookie: __SESSION={o}; __session={t}"], 400, "ambiguous_token"),
    "mixed_case_name_alone": (["Cookie: __Session={t}"], 400, "ambiguous_token"),
    "php_dot_for_underscore": (["Cookie: _.session={o}; __session={t}"], 400,
                               "ambiguous_token"),
    "php_space_for_underscore": (["Cookie: _ session={o}; __session={t}"], 400,
                                 "ambiguous_token"),
    "php_bracket_for_underscore": (["Cookie: [_session={t}"], 400, "ambiguous_token"),
    "percent_encoded_name": (["Cookie: %5F%5Fsession={o}; __session={t}"], 400,
                             "ambiguous_token"),
    "percent_encoded_letter": (["Cookie: __%73ession={t}"], 400, "ambiguous_token"),
    "long_s_folds_to_s": (["Cookie: __\u017fession={t}"], 400, "ambiguous_token"),
    "comma_separated": (["Cookie: a=1, __session={t}"], 400, "ambiguous_token"),
    "blank_before_equals": (["Cookie: __session ={t}"], 400, "ambiguous_token"),
    "quoted_value": (['Cookie: __session="{t}"'], 400, "ambiguous_token"),
    "percent_in_value": (["Cookie: __session={t}%2E"], 400, "ambiguous_token"),
    "plus_in_value": (["Cookie: __session={t}+"], 400, "ambiguous_token"),
    "two_suffixed_cookies": (["Cookie: __session_abcdefgh={t}; __session_abcdefgi={o}"], 400,
                             "ambiguous_token"),
    "blank_inside_the_suffix": (["Cookie: __session_ab cdefg={t}"], 400, "ambiguous_token"),
    "too_many_mentions": (["Cookie: " + "; ".join(["x__session=1"] * 9)], 400,
                          "ambiguous_token"),
}
NOT_UTF8: dict[str, tuple[list[bytes], int, str]] = {
    "bearer_token_not_utf8": ([b"Authorization: Bearer {t}\xff"], 401, "malformed_token"),
    "bearer_token_latin1": ([b"Authorization: Bearer caf\xe9"], 401, "malformed_token"),
    "cookie_token_not_utf8": ([b"Cookie: __session=\xc3\x28{t}"], 401, "malformed_token"),
    # Read through (status 0: allowed) by forward-auth; the proxy refuses to forward it.
    "cookie_name_not_utf8": ([b"Cookie: \xff=1; __session={t}"], 0, "malformed_request"),
    "cookie_token_utf8": ([b"Cookie: __session=caf\xc3\xa9"], 401, "malformed_token"),
}
ALLOWED: dict[str, list[str]] = {
    "bearer": ["Authorization: Bearer {t}"],
    "bearer_any_case": ["Authorization: bEaReR {t}"],
    "basic_leaves_the_cookie": ["Authorization: Basic dXNlcjpwYXNz", "Cookie: __session={t}"],
    "session_cookie": ["Cookie: theme=dark; __session={t}; lang=en"],
    "suffixed_cookie": ["Cookie: __session_abcdefgh={t}"],
    "plain_and_suffixed": ["Cookie: __session={t}; __session_abcdefgh={o}"],
    "empty_cookie_then_suffixed": ["Cookie: __session=; __session_abcdefgh={t}"],
    "other_cookies_named_alike": ["Cookie: x__session=1; __sessionx=2; __session={t}"],
    "cookie_values_that_mention_it": ["Cookie: next=/a?__session=1; __session={t}"],
    "two_cookie_headers_with_a_bearer": ["Authorization: Bearer {t}", "Cookie: a=1",
                                         "Cookie: __session={o}; __session={o}"],
}


def filled(line: str, doors: Doors) -> bytes:
    """A header line with the tokens filled in, as UTF-8."""
    return line.format(t=doors.token, o=doors.other).encode()


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("case", REFUSED.keys())
async def test_a_token_source_read_differently_elsewhere_is_refused(
    doors: Doors, door: str, case: str
) -> None:
    lines, status, reason = REFUSED[case]
    raw = head([filled(line, doors) for line in lines])
    for path in (b"/app", b"/maybe/x"):  # never anonymous on an optional route either
        seen = len(doors.upstream.seen)
        got, body = await exchange(doors.ports[door], raw.replace(b"/app", path, 1))
        assert (got, body.get("reason")) == (status, reason), (door, case, path)
        assert doors.token not in json.dumps(body)
        assert len(doors.upstream.seen) == seen  # nothing reached the upstream


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("case", NOT_UTF8.keys())
async def test_bytes_no_token_is_made_of_are_refused_never_a_500(
    doors: Doors, door: str, case: str
) -> None:
    lines, status, reason = NOT_UTF8[case]
    raw = head([line.replace(b"{t}", doors.token.encode()) for line in lines])
    got, body = await exchange(doors.ports[door], raw)
    if status == 0 and got == 200:
        return
    assert got == (status or 400), (door, case, body)
    assert body["reason"] == reason and body["request_id"]


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("case", ALLOWED.keys())
async def test_the_one_form_read_is_allowed(doors: Doors, door: str, case: str) -> None:
    raw = head([filled(line, doors) for line in ALLOWED[case]])
    got, body = await exchange(doors.ports[door], raw)
    assert got == 200, (door, case, body)


@pytest.mark.parametrize("door", DOORS)
async def test_cookies_are_not_read_where_no_token_is_needed(doors: Doors, door: str) -> None:
    """A public route, or a request whose header token decides, never reads the cookies."""
    ambiguous = "Cookie: __session={t}; __SESSION={o}"
    for lines, path in (([ambiguous], b"/public/x"),
                        (["Authorization: Bearer {t}", ambiguous], b"/app")):
        got, body = await exchange(doors.ports[door], head([filled(x, doors) for x in lines],
                                                           path))
        assert got == 200, (door, lines, body)


def test_the_cookie_reader_reads_only_the_token_cookie() -> None:
    reader = CookieReader("__session")
    assert reader.read([]) is None
    assert reader.read(["a=1; b=2"]) is None
    assert reader.read(["a=1; __session="]) is None
    assert reader.read(["__session=t.o.k"]) == "t.o.k"
    assert reader.read(["__session_abcdefgh=s.u.f; __session=p.l.a"]) == "p.l.a"
    with pytest.raises(MalformedCookie):
        reader.read(["__session=caf\u00e9"])
    with pytest.raises(UnclearCookie):
        reader.read(["__session=a b"])
    other = CookieReader("my.token")  # any configured name: its PHP spelling is folded too
    assert other.read(["my.token=x"]) == "x"
    with pytest.raises(UnclearCookie):
        other.read(["my_token=y; my.token=x"])


@settings(max_examples=400)
@given(st.one_of(st.text(), st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x80)),
                 st.from_regex(r"[!-~]+", fullmatch=True)))
def test_visible_ascii_is_the_token_alphabet(text: str) -> None:
    """The token check agrees with `[!-~]+`: any text, surrogates and blanks included."""
    assert visible_ascii(text) == (re.fullmatch(r"[!-~]+", text) is not None)
