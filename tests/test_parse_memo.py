"""The memo of parsed heads (gateway/http/memo.py): bounded, and resting when it rarely hits."""

from __future__ import annotations

from gateway.http.memo import REST, WINDOW, ParseMemo


def test_a_kept_key_is_found_and_counted() -> None:
    memo: ParseMemo[bytes, str] = ParseMemo(4, 16)
    memo.keep(b"head", "parsed")
    assert memo.get(b"head") == "parsed"
    assert memo.get(b"other") is None
    assert memo.hits == 1


def test_long_keys_are_not_kept_and_a_full_memo_starts_again() -> None:
    memo: ParseMemo[bytes, int] = ParseMemo(3, 8)
    memo.keep(b"123456789", 1)
    assert memo.get(b"123456789") is None
    for n in range(4):
        memo.keep(b"k%d" % n, n)
    assert memo.get(b"k0") is None  # forgotten when the fourth came
    assert memo.get(b"k3") == 3


def test_a_window_of_misses_makes_it_rest_then_try_again() -> None:
    memo: ParseMemo[bytes, int] = ParseMemo(8, 16)
    memo.keep(b"seen", 1)
    for n in range(WINDOW):
        memo.get(b"miss %d" % n)
    assert memo.resting
    memo.keep(b"new", 2)  # not kept while resting
    assert memo.get(b"seen") is None  # emptied, and not looked up
    for _ in range(REST - 1):
        assert memo.get(b"seen") is None
    assert not memo.resting
    memo.keep(b"new", 2)
    assert memo.get(b"new") == 2


def test_enough_hits_keep_it_looking() -> None:
    memo: ParseMemo[bytes, int] = ParseMemo(8, 16)
    memo.keep(b"seen", 1)
    for n in range(3 * WINDOW):
        memo.get(b"seen" if n % 4 == 0 else b"miss")  # a quarter hit
    assert not memo.resting
    assert memo.get(b"seen") == 1


def test_too_few_hits_make_it_rest() -> None:
    memo: ParseMemo[bytes, int] = ParseMemo(8, 16)
    memo.keep(b"seen", 1)
    for n in range(WINDOW):
        memo.get(b"seen" if n % 16 == 0 else b"miss")  # one in sixteen
    assert memo.resting
