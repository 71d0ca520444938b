"""The shared store on one host: one SQLite database (WAL) in the state directory.

Every worker opens the same file with one connection, used from one thread of its own, so
the event loop never waits on the disk. The database is the meeting point; there is no
broker. A background task polls ``PRAGMA data_version`` (unchanged unless another connection
committed) every ``poll_seconds`` and, only when it moved, reads the feed rows written since
the last one it saw and hands them to the namespace's subscribers. Expired records and old
feed rows are purged in the background. Commits use ``synchronous=FULL``: a committed write
survives SIGKILL and power loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.state.schema import BUSY_TIMEOUT_SECONDS, StateError, connect
from gateway.state.store import Change, ChangeHandler, Record, StoreUnavailable, Update
from gateway.tasks import stop_task

__all__ = ["FEED_KEEP_SECONDS", "PURGE_EVERY_SECONDS", "SqliteStore"]

log = logging.getLogger("gateway.state")

FEED_KEEP_SECONDS = 600.0
PURGE_EVERY_SECONDS = 30.0
_FEED_BATCH = 5000
_IN_CHUNK = 500
T = TypeVar("T")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock first, waiting up to busy_timeout) ... COMMIT."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SqliteStore:
    """SharedStore on a SQLite file: one connection and one thread per process."""

    def __init__(self, path: Path, clock: Callable[[], float], *, poll_seconds: float = 0.25,
                 max_lag: float = 1.0, timeout: float = BUSY_TIMEOUT_SECONDS + 1.0) -> None:
        self.path = path
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._max_lag = max_lag
        self._timeout = timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._healthy = True
        self._feed_ok = False
        self._polled_at = float("-inf")
        self.fresh_until = float("-inf")  # the feed is current until then (clock time)
        self._cursor = 0
        self._data_version: int | None = None
        self._wrote = False
        self._subscribers: dict[str, list[tuple[ChangeHandler, Callable[[], None]]]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """True while the last operation against the database succeeded."""
        return self._healthy

    @property
    def feed_current(self) -> bool:
        """True when a feed read that started less than ``max_lag`` seconds ago succeeded:
        every change committed before then has been delivered."""
        return self._clock() < self.fresh_until

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (creating or checking the schema; StateError when unusable), start the feed."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gateway-state")
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, self._connect_sync)
        self._cursor = await self._run(self._top_sync)
        self._feed_ok, self._polled_at = True, self._clock()
        self.fresh_until = self._polled_at + self._max_lag
        self._task = loop.create_task(self._poll_loop(), name="state-feed")

    def _connect_sync(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"{self.path.parent} cannot be created ({exc.strerror})") from exc
        return connect(self.path, True)

    async def close(self) -> None:
        """Stop the feed, close the connection and the thread."""
        await stop_task(self._task)
        self._task = None
        if self._executor is not None:
            if self._conn is not None:
                conn = self._conn
                with contextlib.suppress(Exception):
                    await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
            self._executor.shutdown(wait=False)
            self._executor, self._conn = None, None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a database call on the store's thread, mapping failures to StoreUnavailable."""
        if self._executor is None or self._conn is None:
            raise StoreUnavailable("the state store is not open")
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            async with asyncio.timeout(self._timeout):
                result = await loop.run_in_executor(self._executor, fn, *args)
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            if self._healthy:
                log.warning("state store failed", extra={"error": repr(exc)})
            self._healthy = False
            raise StoreUnavailable(type(exc).__name__) from exc
        self._healthy = True
        return result

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    # -- records ----------------------------------------------------------------------------

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[Record | None]:
        """The live records of several keys, in order."""
        return await self._run(self._get_many_sync, namespace, list(keys), self._clock())

    def _get_many_sync(self, namespace: str, keys: list[str], now: float) -> list[Record | None]:
        found: dict[str, Record] = {}
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start:start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, value, expires_at FROM entries WHERE ns = ? AND key IN ({marks})"  # noqa: S608 - placeholders only
                " AND expires_at > ?", (namespace, *chunk, now)).fetchall()
            found.update((row[0], Record(*row)) for row in rows)
        return [found.get(key) for key in keys]

    async def items(self, namespace: str) -> list[Record]:
        """Every live record of a namespace."""
        return await self._run(self._items_sync, namespace, self._clock())

    def _items_sync(self, namespace: str, now: float) -> list[Record]:
        rows = self._db.execute(
            "SELECT key, value, expires_at FROM entries WHERE ns = ? AND expires_at > ?",
            (namespace, now)).fetchall()
        return [Record(*row) for row in rows]

    async def put(self, namespace: str, key: str, value: str, expires_at: float, *,
                  feed: bool = False) -> None:
        """Store (replace) a record; with ``feed`` every subscriber is told."""
        await self._run(self._put_sync, namespace, key, value, expires_at, feed, self._clock())

    def _upsert_sync(self, namespace: str, key: str, value: str, expires_at: float) -> None:
        self._db.execute(
            "INSERT INTO entries (ns, key, value, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
            "expires_at = excluded.expires_at", (namespace, key, value, expires_at))

    def _put_sync(self, namespace: str, key: str, value: str, expires_at: float, feed: bool,
                  now: float) -> None:
        with _transaction(self._db):
            self._upsert_sync(namespace, key, value, expires_at)
            if feed:
                self._db.execute(
                    "INSERT INTO changes (ns, key, op, value, expires_at, at) "
                    "VALUES (?, ?, 'put', ?, ?, ?)", (namespace, key, value, expires_at, now))
        self._wrote = self._wrote or feed

    async def delete(self, namespace: str, key: str, *, feed: bool = False) -> bool:
        """Drop a record; False when there was no live one."""
        return await self._run(self._delete_sync, namespace, key, feed, self._clock())

    def _delete_sync(self, namespace: str, key: str, feed: bool, now: float) -> bool:
        with _transaction(self._db):
            rows = self._db.execute(
                "DELETE FROM entries WHERE ns = ? AND key = ? RETURNING expires_at",
                (namespace, key)).fetchall()
            if feed:
                self._db.execute(
                    "INSERT INTO changes (ns, key, op, at) VALUES (?, ?, 'delete', ?)",
                    (namespace, key, now))
        self._wrote = self._wrote or feed
        return any(row[0] > now for row in rows)

    async def claim(self, namespace: str, key: str, value: str, expires_at: float) -> bool:
        """Create the record unless a live one exists (one statement, so atomic)."""
        return await self._run(self._claim_sync, namespace, key, value, expires_at,
                               self._clock())

    def _claim_sync(self, namespace: str, key: str, value: str, expires_at: float,
                    now: float) -> bool:
        cursor = self._db.execute(
            "INSERT INTO entries (ns, key, value, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
            "expires_at = excluded.expires_at WHERE entries.expires_at <= ?",
            (namespace, key, value, expires_at, now))
        return cursor.rowcount == 1

    async def update(self, namespace: str, keys: Sequence[str], change: Update[T]) -> T:
        """Read, change and write records in one BEGIN IMMEDIATE transaction: atomic across
        every process; a ``change`` that writes nothing commits nothing."""
        return await self._run(self._update_sync, namespace, list(keys), change, self._clock())

    def _update_sync(self, namespace: str, keys: list[str], change: Update[T], now: float) -> T:
        with _transaction(self._db):
            writes, result = change(self._get_many_sync(namespace, keys, now))
            for record in writes:
                self._upsert_sync(namespace, record.key, record.value, record.expires_at)
        return result

    # -- the change feed --------------------------------------------------------------------

    def subscribe(self, namespace: str, on_change: ChangeHandler,
                  on_resync: Callable[[], None]) -> Callable[[], None]:
        """Deliver a namespace's feed to ``on_change``; returns the unsubscribe function."""
        subscriber = (on_change, on_resync)
        self._subscribers.setdefault(namespace, []).append(subscriber)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.get(namespace, []).remove(subscriber)

        return unsubscribe

    def _top_sync(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        return int(row[0]) if row else 0

    def _read_feed_sync(self, cursor: int) -> tuple[list[Change], int, bool]:
        """(new changes, the new cursor, whether changes were missed) — cheap when idle."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version and not self._wrote:
            return [], cursor, False
        self._data_version, self._wrote = version, False
        rows = self._db.execute(
            "SELECT seq, ns, key, op, value, expires_at FROM changes WHERE seq > ? "
            "ORDER BY seq LIMIT ?", (cursor, _FEED_BATCH)).fetchall()
        if len(rows) == _FEED_BATCH:
            self._wrote = True  # more to read: the next poll continues
        if not rows:
            top = self._top_sync()
            return [], max(cursor, top), top > cursor
        missed = rows[0][0] != cursor + 1
        changes = [
            Change(ns, key, op, Record(key, value, expires) if op == "put" else None)
            for _seq, ns, key, op, value, expires in rows
        ]
        return changes, int(rows[-1][0]), missed

    async def poll(self) -> None:
        """Read the feed once and deliver what is new (the background task calls this)."""
        started = self._clock()
        try:
            changes, cursor, missed = await self._run(self._read_feed_sync, self._cursor)
        except StoreUnavailable:
            self._feed_ok, self.fresh_until = False, float("-inf")
            return
        recovered = not self._feed_ok
        self._cursor, self._feed_ok, self._polled_at = cursor, True, started
        self.fresh_until = started + self._max_lag
        if missed or recovered:
            self._resync_all()
        self._deliver(changes)

    def _resync_all(self) -> None:
        for subscribers in self._subscribers.values():
            for _handler, resync in list(subscribers):
                try:
                    resync()
                except Exception:  # one subscriber's bug must not stop the feed
                    log.exception("state feed resync failed")

    def _deliver(self, changes: list[Change]) -> None:
        by_namespace: dict[str, list[Change]] = {}
        for change in changes:
            by_namespace.setdefault(change.namespace, []).append(change)
        for namespace, batch in by_namespace.items():
            for handler, _resync in list(self._subscribers.get(namespace, [])):
                try:
                    handler(batch)
                except Exception:  # one subscriber's bug must not stop the feed
                    log.exception("state feed subscriber failed")

    async def purge(self) -> None:
        """Drop expired records and feed rows older than FEED_KEEP_SECONDS."""
        await self._run(self._purge_sync, self._clock())

    def _purge_sync(self, now: float) -> None:
        with _transaction(self._db):
            self._db.execute("DELETE FROM entries WHERE expires_at <= ?", (now,))
            self._db.execute("DELETE FROM changes WHERE at < ?", (now - FEED_KEEP_SECONDS,))

    async def _poll_loop(self) -> None:
        next_purge = self._clock()
        while True:
            await asyncio.sleep(self._poll_seconds)
            await self.poll()
            if self._clock() >= next_purge:
                next_purge = self._clock() + PURGE_EVERY_SECONDS
                with contextlib.suppress(StoreUnavailable):
                    await self.purge()
