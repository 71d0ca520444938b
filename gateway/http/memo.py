"""A bounded memo of what parsing some exact bytes gave, that rests when it rarely hits.

The fast doors parse every head with llhttp, which calls back into Python for every field.
Clients and upstreams often send the very same head again (the same client, token and path;
the same answer of the same size in the same second), and the same bytes parse the same way
from the same parser state. So a door may keep what a head gave, keyed by the head's exact
bytes, and skip parsing when they come again.

A memo costs a hash and a lookup per head, and keeping an entry costs a little more. When
heads vary (every path, answer size or id different), that is all it would ever cost: after
each window of `WINDOW` lookups with fewer than one hit in `_MIN_HIT_SHARE`, it is emptied
and rests (neither looks nor keeps) for `REST` heads, then tries again.
"""

from __future__ import annotations

from collections.abc import Hashable, Sized
from typing import Generic, Protocol, TypeVar

__all__ = ["REST", "WINDOW", "ParseMemo"]


class _Key(Hashable, Sized, Protocol):
    """Bytes, or a tuple of what made a result (its length bounded as `max_key`)."""


K = TypeVar("K", bound=_Key)
V = TypeVar("V")

WINDOW = 1024  # lookups per verdict on the hit rate
REST = 16 * WINDOW  # heads not looked up after a window with too few hits
_MIN_HIT_SHARE = 8  # a window needs more than WINDOW / this hits to go on


class ParseMemo(Generic[K, V]):
    """Exact bytes (or what else made a result) -> the result: at most `max_entries` keys of
    at most `max_key` bytes (or items)."""

    __slots__ = ("_entries", "_left", "_max_entries", "_max_key", "_window_from", "hits",
                 "resting")

    def __init__(self, max_entries: int, max_key: int) -> None:
        self._entries: dict[K, V] = {}
        self._max_entries = max_entries
        self._max_key = max_key
        self._left = WINDOW  # lookups left in this window
        self._window_from = 0  # `hits` when this window began
        self.resting = 0  # heads left to skip (while it neither looks nor keeps)
        self.hits = 0  # in all (tests and the bench read it)

    def get(self, key: K) -> V | None:
        """What `key` gave when it was parsed, if it is kept (never while resting; a key too
        long to keep is not looked up)."""
        if self.resting:
            self.resting -= 1
            return None
        value = self._entries.get(key) if len(key) <= self._max_key else None
        if value is not None:
            self.hits += 1
        self._left -= 1
        if not self._left:
            self._judge()
        return value

    def _judge(self) -> None:
        """A window ended: rest (emptied) when it had too few hits; then a new window."""
        if (self.hits - self._window_from) * _MIN_HIT_SHARE <= WINDOW:
            self._entries.clear()
            self.resting = REST
        self._left = WINDOW
        self._window_from = self.hits

    def keep(self, key: K, value: V) -> None:
        """Keep what parsing `key` gave (not while resting, nor a long key; all is forgotten
        when full)."""
        if self.resting or len(key) > self._max_key:
            return
        entries = self._entries
        if len(entries) >= self._max_entries:
            entries.clear()
        entries[key] = value
