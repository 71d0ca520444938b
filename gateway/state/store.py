"""The shared-store interface: namespaced key/value with expiry, claims, atomic updates and a
change feed.

Every fact a worker learns that every other worker must see (revocations, webhook
deliveries, key sets, introspection answers, machine-token verdicts) is one record:
``(namespace, key) -> value`` living until ``expires_at`` (wall-clock seconds). Writers that
want other workers told at once pass ``feed=True``; subscribers of that namespace then get
the change within the store's poll interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = ["Change", "ChangeHandler", "Record", "SharedStore", "StoreUnavailable", "Update"]

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The shared store could not be reached (or did not answer in time)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One live value of a namespace."""

    key: str
    value: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Change:
    """One write seen on the change feed: ``op`` is "put" (with the record) or "delete"."""

    namespace: str
    key: str
    op: str
    record: Record | None = None


ChangeHandler = Callable[[Sequence[Change]], None]
"""Called (in the event loop, must not block) with the feed's new changes of a namespace."""

Update = Callable[[list[Record | None]], tuple[list[Record], T]]
"""Given the live records of some keys (None for absent ones): the records to write, and a
result. Runs inside the store's transaction (on its thread): pure, quick, never raising."""


class SharedStore(Protocol):
    """What the modules sharing state need from a backend."""

    @property
    def healthy(self) -> bool:
        """True while the last operation against the backend succeeded."""

    @property
    def feed_current(self) -> bool:
        """True when every change committed by others up to ``lag`` seconds ago was delivered."""

    @property
    def fresh_until(self) -> float:
        """The clock time until which ``feed_current`` holds (for hot paths holding ``now``)."""

    async def open(self) -> None:
        """Connect, create or check the schema, start the change feed."""

    async def close(self) -> None:
        """Stop the feed and release the connection."""

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[Record | None]:
        """The live records of several keys (None for absent or expired ones)."""

    async def items(self, namespace: str) -> list[Record]:
        """Every live record of a namespace."""

    async def put(self, namespace: str, key: str, value: str, expires_at: float, *,
                  feed: bool = False) -> None:
        """Store (replace) a record; ``feed`` tells every subscriber."""

    async def delete(self, namespace: str, key: str, *, feed: bool = False) -> bool:
        """Drop a record; False when there was no live one."""

    async def claim(self, namespace: str, key: str, value: str, expires_at: float) -> bool:
        """Atomically create a record unless a live one exists; True when this call won."""

    async def update(self, namespace: str, keys: Sequence[str], change: Update[T]) -> T:
        """Atomically read the live records of ``keys``, write what ``change`` makes of them,
        and return its result (no other writer runs in between, in any process)."""

    def subscribe(self, namespace: str, on_change: ChangeHandler,
                  on_resync: Callable[[], None]) -> Callable[[], None]:
        """Deliver a namespace's feed; ``on_resync`` when changes may have been missed.
        Returns the function that unsubscribes."""
