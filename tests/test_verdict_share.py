"""Machine-token verdicts in the shared store: seen by every worker, kept under the token's
digest (never the token), read only on a local miss, and a store that fails leaves each
worker verifying on its own (never a 500, never a refusal the store caused)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth.claims import Identity
from gateway.auth.verdicts import LocalVerdicts, Verdict
from gateway.devissuer import DevIssuer
from gateway.reasons import Reason
from gateway.state.schema import database_path
from gateway.state.sqlite import SqliteStore
from gateway.state.store import StoreUnavailable
from gateway.state.verdict_share import MACHINE_VERDICTS, SharedVerdicts
from tests.conftest import GatewayFactory
from tests.machine_support import machine_gateway

TOKEN = "ak_the_secret_api_key_itself"
KEY = hashlib.sha256(TOKEN.encode()).digest()


def valid(now: float, fresh_for: float = 300.0) -> Verdict:
    machine = Identity(issuer="https://clerk.example.com", user_id="", expires_at=now + 3600,
                       org_id="org_1", token_type="api_key", scopes=("read",))
    return Verdict(machine, None, now, now + fresh_for)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """The host's SQLite store (one database, as every worker opens it)."""
    opened = SqliteStore(database_path(tmp_path / "state"), time.time)
    await opened.open()
    yield opened
    await opened.close()


def worker(store: SqliteStore) -> SharedVerdicts:
    """One worker's view: its own local verdicts in front of the shared store."""
    return SharedVerdicts(store, "api", LocalVerdicts(100), 60.0, time.time)


async def test_a_verdict_one_worker_puts_is_read_by_another_under_the_digest_only(
    store: SqliteStore, tmp_path: Path
) -> None:
    first, second = worker(store), worker(store)
    now = time.time()
    await first.put(KEY, valid(now))
    assert await second.get(KEY) == valid(now)
    [record] = await store.items(MACHINE_VERDICTS)
    assert record.key == f"api:verdict:{KEY.hex()}"
    assert record.expires_at == pytest.approx(now + 300 + 60)  # fresh_until + grace
    assert TOKEN not in record.key + record.value
    assert TOKEN.encode() not in database_path(tmp_path / "state").read_bytes()
    refused = Verdict(None, Reason.INVALID_CREDENTIAL, now, now + 30)
    await first.put(b"garbage-digest", refused)
    assert await second.get(b"garbage-digest") == refused  # negative verdicts too


async def test_a_fresh_local_verdict_is_served_without_reading_the_store(
    store: SqliteStore
) -> None:
    shared = worker(store)
    await shared.put(KEY, valid(time.time()))
    store._conn.close()  # type: ignore[union-attr]  # the store goes away ...
    assert (await shared.get(KEY)) is not None  # ... and a fresh local verdict needs none
    assert store.healthy  # nothing was asked of it


async def test_a_store_that_fails_leaves_each_worker_its_local_verdicts(
    store: SqliteStore
) -> None:
    shared = worker(store)
    stale = valid(time.time() - 400)
    await shared.put(KEY, stale)
    store._conn.close()  # type: ignore[union-attr]
    assert await shared.get(KEY) == stale  # the local one, for the grace period
    await shared.put(b"other", valid(time.time()))  # not shared, but kept here
    assert (await shared.get(b"other")) is not None
    with pytest.raises(StoreUnavailable):
        await shared.view(KEY)  # the verifier then asks Clerk itself
    await shared.release(KEY)  # best effort, never raises


async def test_the_call_lease_is_won_by_one_worker_and_the_back_off_seen_by_all(
    store: SqliteStore
) -> None:
    first, second = worker(store), worker(store)
    assert await first.claim(KEY, 5.0)
    assert not await second.claim(KEY, 5.0)
    assert (await second.view(KEY)).leased
    await first.release(KEY)
    assert not (await second.view(KEY)).leased
    until = time.time() + 30
    await first.block(until)
    assert (await second.view(b"any-other-token")).blocked_until == until


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
async def test_a_record_that_is_not_a_verdict_is_ignored_never_raised(
    store: SqliteStore, text: str
) -> None:
    await store.put(MACHINE_VERDICTS, f"api:verdict:{KEY.hex()}", text, time.time() + 60)
    assert await worker(store).get(KEY) is None
    assert (await worker(store).view(KEY)).verdict is None


async def test_with_the_store_gone_a_gateway_verifies_each_key_once_on_its_own(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await machine_gateway(make_gateway, clerk)
    assert (await gw.get("/keys", clerk.api_key("user_before"))).status == 200
    assert gw.gateway.state is not None
    gw.gateway.state._conn.close()  # type: ignore[union-attr]  # the database goes away
    key = clerk.api_key("user_after")
    for _ in range(5):
        response = await gw.get("/keys", key)
        assert response.status == 200, await response.text()
    assert clerk.hits["api_keys_verify"] == 2  # still one call per key, in this worker
