"""Whole numbers from untrusted text or bytes (gateway/numbers.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.numbers import whole_number


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=22), st.text("0123456789 +-_²٣", max_size=22).map(
    lambda text: text.encode("utf-8"))))
def test_bytes_read_as_their_latin_1_text(data: bytes) -> None:
    """A header value's bytes give what its text gives (ASCII digits only, at most 18)."""
    assert whole_number(data) == whole_number(data.decode("latin-1"))


def test_only_ascii_digits_count() -> None:
    assert whole_number(b"31") == whole_number("31") == 31
    assert whole_number(b"0031") == 31
    for refused in (b"", b" 31", b"31 ", b"+31", b"-1", b"1_000", b"\xb2", "²".encode(),
                    b"1" * 19, None):
        assert whole_number(refused) is None
    assert whole_number(b"9" * 18) == 10 ** 18 - 1
