"""The SQLite shared store: records, expiry, atomic claims, the change feed, persistence,
and the state directory checks run by `serve` and `check-config`."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, load_settings
from gateway.state.schema import (
    SCHEMA_VERSION,
    StateError,
    check_state_dir,
    connect,
    database_path,
    default_state_dir,
)
from gateway.state.sqlite import FEED_KEEP_SECONDS, SqliteStore
from gateway.state.store import Change, Record, StoreUnavailable
from tests.revocation_support import ADMIN_TOKEN, admin_headers

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """Wall-clock time plus an adjustable offset."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


Stores = Callable[..., Awaitable[SqliteStore]]


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    """Open SqliteStores on one database (as workers do); all closed afterwards."""
    opened: list[SqliteStore] = []

    async def open_store(clock: Callable[[], float] = time.time, **kwargs: float) -> SqliteStore:
        store = SqliteStore(database_path(tmp_path / "state"), clock, **kwargs)
        await store.open()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


class Feed:
    """A subscriber recording what the feed delivers."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.resyncs = 0

    def on_change(self, changes: Sequence[Change]) -> None:
        self.changes.extend(changes)

    def on_resync(self) -> None:
        self.resyncs += 1


async def test_records_live_until_they_expire_and_are_purged(stores: Stores) -> None:
    clock = Clock()
    store = await stores(clock)
    await store.put("ns", "a", "1", clock() + 10)
    await store.put("ns", "b", "2", clock() + 100)
    await store.put("other", "a", "3", clock() + 100)
    assert [r.value if r else None for r in await store.get_many("ns", ["a", "b", "c"])] == [
        "1", "2", None]
    clock.offset = 20
    assert [r.key for r in await store.items("ns")] == ["b"]
    assert await store.delete("ns", "a") is False  # expired: not live
    await store.purge()
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute("SELECT ns, key FROM entries ORDER BY ns, key").fetchall()
    assert rows == [("ns", "b"), ("other", "a")]


async def test_claim_is_won_by_exactly_one_worker_until_it_expires(stores: Stores) -> None:
    clock = Clock()
    workers = [await stores(clock) for _ in range(4)]
    results = await asyncio.gather(*(
        w.claim("lease", "issuer", str(i), clock() + 30) for i, w in enumerate(workers)
        for _ in range(5)))
    assert results.count(True) == 1
    clock.offset = 31  # the lease expired: the next claim wins again, once
    again = await asyncio.gather(*(w.claim("lease", "issuer", "x", clock() + 30)
                                   for w in workers))
    assert again.count(True) == 1


def _increment(records: list[Record | None]) -> tuple[list[Record], int]:
    """An update: add one to a counter record (absent: 0)."""
    [record] = records
    count = int(record.value) + 1 if record is not None else 1
    return [Record("n", str(count), time.time() + 60)], count


async def test_update_is_atomic_across_workers(stores: Stores) -> None:
    workers = [await stores() for _ in range(4)]
    counts = await asyncio.gather(*(w.update("counter", ["n"], _increment)
                                    for w in workers for _ in range(25)))
    assert sorted(counts) == list(range(1, 101))  # no two read the same value
    [record] = await workers[0].get_many("counter", ["n"])
    assert record is not None and record.value == "100"


async def test_update_sees_only_live_records_and_may_write_nothing(stores: Stores) -> None:
    clock = Clock()
    store = await stores(clock)
    await store.put("ns", "old", "1", clock() + 10)
    await store.put("ns", "live", "2", clock() + 100)
    clock.offset = 20
    seen = await store.update("ns", ["old", "live", "absent"],
                              lambda records: ([], [r.value if r else None for r in records]))
    assert seen == [None, "2", None]
    assert [r.key for r in await store.items("ns")] == ["live"]  # nothing written


async def test_feed_delivers_other_workers_changes_in_order(stores: Stores) -> None:
    writer = await stores(poll_seconds=0.05)
    reader = await stores(poll_seconds=0.05)
    feed = Feed()
    reader.subscribe("revocation", feed.on_change, feed.on_resync)
    await writer.put("revocation", "session:s1", "{}", time.time() + 60, feed=True)
    await writer.put("idle", "k", "v", time.time() + 60)  # no feed: not delivered
    await writer.delete("revocation", "session:s1", feed=True)
    for _ in range(200):
        if len(feed.changes) == 2:
            break
        await asyncio.sleep(0.02)
    assert [(c.namespace, c.key, c.op) for c in feed.changes] == [
        ("revocation", "session:s1", "put"), ("revocation", "session:s1", "delete")]
    assert feed.resyncs == 0
    assert reader.feed_current


async def test_a_worker_that_missed_pruned_changes_resyncs(stores: Stores) -> None:
    clock = Clock()
    writer = await stores(clock, poll_seconds=3600)
    reader = await stores(clock, poll_seconds=3600)
    feed = Feed()
    reader.subscribe("revocation", feed.on_change, feed.on_resync)
    await writer.put("revocation", "user:u1", "{}", clock() + 9999, feed=True)
    clock.offset = FEED_KEEP_SECONDS + 1
    await writer.purge()  # the feed row is gone before the reader saw it
    await reader.poll()
    assert feed.resyncs == 1
    assert feed.changes == []


async def test_store_failure_is_reported_and_heals(stores: Stores, tmp_path: Path) -> None:
    store = await stores()
    store._conn.close()  # type: ignore[union-attr]  # simulate the database going away
    with pytest.raises(StoreUnavailable):
        await store.items("revocation")
    assert not store.healthy
    await store.poll()
    assert not store.feed_current


async def test_records_survive_a_closed_and_reopened_store(tmp_path: Path) -> None:
    path = database_path(tmp_path / "state")
    first = SqliteStore(path, time.time)
    await first.open()
    await first.put("revocation", "session:s1", "kept", time.time() + 60, feed=True)
    await first.close()
    second = SqliteStore(path, time.time)
    await second.open()
    try:
        assert [r.value for r in await second.items("revocation")] == ["kept"]
    finally:
        await second.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(), value=st.text(), namespace=st.text(min_size=1))
async def test_any_text_round_trips(tmp_path: Path, key: str, value: str,
                                    namespace: str) -> None:
    key, value, namespace = (s.replace("\x00", "") for s in (key, value, namespace))
    store = SqliteStore(database_path(tmp_path / "hyp"), time.time)
    await store.open()
    try:
        await store.put(namespace, key, value, time.time() + 60)
        [record] = await store.get_many(namespace, [key])
        assert record is not None and record.value == value
        assert await store.delete(namespace, key) is True
    finally:
        await store.close()


# -- the state directory and its database ------------------------------------------------------


def test_default_state_dir_follows_xdg_then_home(tmp_path: Path) -> None:
    assert default_state_dir({"XDG_STATE_HOME": "/srv/state", "HOME": "/h"}) == Path(
        "/srv/state/clerk-gateway")
    assert default_state_dir({"XDG_STATE_HOME": "relative", "HOME": "/h"}) == Path(
        "/h/.local/state/clerk-gateway")
    assert default_state_dir({"HOME": "/h"}) == Path("/h/.local/state/clerk-gateway")


def test_state_dir_setting_env_overrides_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"state_dir: {tmp_path / 'from-file'}\nshared_state: false\n")
    env = {"CLERK_ISSUER": "https://x.example"}
    settings = load_settings(env, str(config))
    assert settings.state_dir == str(tmp_path / "from-file") and settings.shared_state is False
    settings = load_settings({**env, "GATEWAY_STATE_DIR": str(tmp_path / "env"),
                              "GATEWAY_SHARED_STATE": "true"}, str(config))
    assert settings.state_dir == str(tmp_path / "env") and settings.shared_state is True


def test_bad_shared_state_flag_is_a_config_problem() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_SHARED_STATE: 'maybe' must be true or false"):
        load_settings({"CLERK_ISSUER": "https://x.example", "GATEWAY_SHARED_STATE": "maybe"})


def test_a_usable_directory_is_created_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b"
    assert check_state_dir(state, create=False) == []  # check-config creates nothing
    assert not state.exists()
    assert check_state_dir(state, create=True) == []
    assert state.stat().st_mode & 0o777 == 0o700
    with sqlite3.connect(database_path(state)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_in_the_way_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert check_state_dir(blocker, create=True) == [
        f"state_dir {blocker}: exists and is not a directory"]
    [problem] = check_state_dir(blocker / "state", create=True)
    assert problem.startswith(f"state_dir {blocker / 'state'}: cannot be created")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_an_unwritable_directory_is_reported(tmp_path: Path) -> None:
    state = tmp_path / "ro"
    state.mkdir(mode=0o500)
    [problem] = check_state_dir(state, create=True)
    assert "is not writable by this user" in problem


@pytest.mark.parametrize(("content", "expected"), [
    (b"this is not a database at all" * 200, "is corrupt or not an SQLite database"),
    (b"SQLite format 3\x00" + os.urandom(4000), "is corrupt or not an SQLite database"),
])
def test_a_corrupt_database_is_reported(tmp_path: Path, content: bytes, expected: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    database_path(state).write_bytes(content)
    for create in (False, True):
        [problem] = check_state_dir(state, create=create)
        assert expected in problem and "move it away" in problem


def test_a_foreign_or_newer_database_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(database_path(state)) as conn:
        conn.execute("CREATE TABLE notes (text)")
    [problem] = check_state_dir(state, create=True)
    assert "an SQLite database of another program" in problem
    database_path(state).unlink()
    connect(database_path(state), True).close()
    with sqlite3.connect(database_path(state)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer than this gateway's"):
        connect(database_path(state), True)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "CLERK_"))}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True, text=True, timeout=60, check=False)


def test_check_config_lists_a_corrupt_state_dir_with_every_other_problem(
    tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    database_path(state).write_bytes(b"garbage" * 1000)
    result = _cli("check-config", env={
        "CLERK_ISSUER": "https://x.example", "GATEWAY_STATE_DIR": str(state),
        "GATEWAY_LISTEN": "nowhere"})
    assert result.returncode == 2
    assert result.stderr.startswith("invalid configuration:")
    assert "listen: 'nowhere' must be host:port" in result.stderr
    assert f"state_dir {state}: {database_path(state)} is corrupt" in result.stderr
    ok = _cli("check-config", env={"CLERK_ISSUER": "https://x.example",
                                   "GATEWAY_STATE_DIR": str(tmp_path / "fresh")})
    assert ok.returncode == 0, ok.stderr
    assert f"state: {tmp_path / 'fresh'} (shared by every worker)" in ok.stdout


def test_serve_refuses_to_start_on_an_unusable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _cli("serve", "--workers", "2", env={
        "CLERK_ISSUER": "https://x.example", "GATEWAY_STATE_DIR": str(blocker)})
    assert result.returncode == 2
    assert f"state_dir {blocker}: exists and is not a directory" in result.stderr


async def test_a_reload_keeps_the_running_state_dir_and_says_a_restart_is_needed(
    make_gateway: Any, clerk: Any, tmp_path: Path
) -> None:
    gw = await make_gateway()
    running_dir = gw.gateway.settings.state_dir
    new = load_settings({"CLERK_ISSUER": clerk.issuer,
                         "GATEWAY_STATE_DIR": str(tmp_path / "elsewhere"),
                         "GATEWAY_SHARED_STATE": "false"})
    result = await gw.gateway.reload(new)
    assert {"state_dir", "shared_state"} <= set(result.restart_required)
    assert gw.gateway.settings.state_dir == running_dir
    assert gw.gateway.settings.shared_state is True
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(("mode", "status"), [("fail_closed", 503), ("fail_open", 200)])
async def test_a_state_store_failing_at_run_time_follows_on_store_error(
    make_gateway: Any, clerk: Any, mode: str, status: int
) -> None:
    clock = Clock()
    gw = await make_gateway(env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
                            config={"revocation": {"on_store_error": mode}}, clock=clock)
    token = clerk.token(sub="user_1", lifetime=3600)
    assert (await gw.get("/", token)).status == 200
    gw.gateway.state._conn.close()  # the database goes away under the running gateway
    clock.offset = 10  # past local_ttl_seconds (1) + store_grace_seconds (5)
    response = await gw.get("/", token)
    assert response.status == status
    if status == 503:
        assert (await response.json())["reason"] == "revocation_unavailable"
    else:
        sample = gw.gateway.registry.get_sample_value(
            "clerk_gateway_fail_open_total", {"component": "revocation_store"})
        assert sample == 1
    ready = await gw.admin.get("/readyz")
    assert ready.status == 503 and (await ready.json())["checks"]["state"] is False
    added = await gw.admin.post("/admin/revocations", json={"kind": "user", "id": "u"},
                                headers=admin_headers())
    assert added.status == 503  # not stored, so not claimed: never a 201 nor a 500


@pytest.mark.timeout(60)  # the regression hung for good
async def test_close_always_ends_the_feed_even_when_a_poll_completes_as_it_is_cancelled(
    tmp_path: Path,
) -> None:
    # The feed polling back to back: close() lands while a database call is finishing, the
    # moment Python 3.11's wait_for swallowed cancellations (a worker then never stopped).
    for round_ in range(60):
        store = SqliteStore(database_path(tmp_path / "state"), time.time, poll_seconds=0.0)
        await store.open()
        feed = store._task
        assert feed is not None
        await asyncio.sleep(0.0005 * (round_ % 5))
        async with asyncio.timeout(10):
            await store.close()
        assert feed.done(), f"the feed still runs after close() (round {round_})"
