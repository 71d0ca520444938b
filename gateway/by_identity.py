"""Values worked out once per object and remembered by the object's identity, bounded.

The verifier hands every request with a cached token the same Identity and the same headers
tuple, so what is derived from them (revocation keys, encoded header lines) need not be
derived again per request. Each entry keeps its object alive, so no other object can take its
id while the entry exists: a hit is always the very object the value was worked out for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ByIdentity"]

K = TypeVar("K")
V = TypeVar("V")


class ByIdentity(Generic[K, V]):
    """`of(obj, work)`: `work(obj)`, remembered for `obj` (all forgotten once full)."""

    __slots__ = ("_entries", "_max_entries")

    def __init__(self, max_entries: int) -> None:
        self._entries: dict[int, tuple[K, V]] = {}
        self._max_entries = max_entries

    def of(self, obj: K, work: Callable[[K], V], *,
           remember: Callable[[K], bool] | None = None) -> V:
        """The value for `obj`; `remember`, asked only when the value is worked out, says
        whether `obj` cannot change later (by default every object is remembered)."""
        entries = self._entries
        entry = entries.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        value = work(obj)
        if remember is None or remember(obj):
            if len(entries) >= self._max_entries:
                entries.clear()
            entries[id(obj)] = (obj, value)
        return value
