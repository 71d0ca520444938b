"""Budgets of Backend API look-ups: the same token-bucket behaviour in one process and in the
shared store (one burst for every worker together, refill over time, both buckets or
neither spent), rows that expire when full and are purged, hostile rows ignored, and a store
that fails leaving each worker its own bounded budget, counted in the metrics."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth.budget import LookupBudgets, Rate
from gateway.devissuer import DevIssuer
from gateway.state.budget_share import LOOKUP_BUDGETS, SharedBudgets
from gateway.state.schema import database_path
from gateway.state.sqlite import SqliteStore
from gateway.state.store import StoreUnavailable
from tests.conftest import GatewayFactory
from tests.machine_support import Clock, machine_gateway

Take = Callable[[str], Awaitable[float]]
Budgets = Callable[[Rate, Rate], Awaitable[list[Take]]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def stores(tmp_path: Path, clock: Clock) -> AsyncIterator[list[SqliteStore]]:
    """Two workers' stores on one database (each its own connection and thread)."""
    opened = [SqliteStore(database_path(tmp_path / "state"), clock) for _ in range(2)]
    for store in opened:
        await store.open()
    yield opened
    for store in opened:
        await store.close()


def shared(store: SqliteStore, client: Rate, instance: Rate) -> SharedBudgets:
    """One worker's shared budgets, on its store's (the test's) clock."""
    return SharedBudgets(store, "api", client, instance, store._clock)


@pytest.fixture(params=["local", "shared"])
def budgets(request: pytest.FixtureRequest, stores: list[SqliteStore], clock: Clock) -> Budgets:
    """Two workers' `take` functions: in this process (one LookupBudgets, as one worker holds)
    or each through its own connection to the shared store."""

    async def make(client: Rate, instance: Rate) -> list[Take]:
        if request.param == "local":
            local = LookupBudgets(client, instance)

            async def take_local(address: str) -> float:
                return local.take(address, clock())

            return [take_local, take_local]
        takes: list[Take] = []
        for store in stores:
            budget = shared(store, client, instance)

            async def take_shared(address: str, budget: SharedBudgets = budget) -> float:
                return await budget.take(address)

            takes.append(take_shared)
        return takes

    return make


async def test_a_client_gets_its_burst_then_waits_for_the_refill(
    budgets: Budgets, clock: Clock
) -> None:
    first, second = await budgets(Rate(0.5, 3), Rate(100, 1000))
    assert [await take("10.0.0.1") for take in (first, second, first)] == [0.0] * 3
    assert await second("10.0.0.1") == pytest.approx(2.0)  # one unit at 0.5 per second
    assert await first("10.0.0.1") == pytest.approx(2.0)
    assert await first("10.0.0.2") == 0.0  # another client has its own bucket
    clock.advance(2.0)
    assert await second("10.0.0.1") == 0.0
    assert await first("10.0.0.1") > 0.0
    clock.advance(1000.0)  # refilled up to the burst, never past it
    assert [await (first, second)[i % 2]("10.0.0.1") for i in range(4)][3] > 0.0


async def test_the_instance_bucket_bounds_every_client_together(budgets: Budgets) -> None:
    first, second = await budgets(Rate(0.001, 10), Rate(0.25, 4))
    waits = [await (first, second)[i % 2](f"10.0.{i}.1") for i in range(10)]
    assert waits[:4] == [0.0] * 4
    assert waits[4:] == [pytest.approx(4.0)] * 6


async def test_a_refused_attempt_spends_neither_bucket(budgets: Budgets, clock: Clock) -> None:
    first, second = await budgets(Rate(0.001, 2), Rate(1.0, 2))
    assert await first("10.0.0.1") == 0.0
    assert await second("10.0.0.2") == 0.0  # the instance's bucket is now empty
    assert await first("10.0.0.1") == pytest.approx(1.0)  # refused for the instance's sake
    clock.advance(1.0)
    assert await second("10.0.0.1") == 0.0  # ... so the client still holds its second unit
    assert await first("10.0.0.1") == pytest.approx(999.0)  # now it is empty


async def test_two_workers_share_one_burst_under_concurrency(
    stores: list[SqliteStore], clock: Clock
) -> None:
    workers = [shared(store, Rate(0.001, 5), Rate(0.001, 8)) for store in stores]
    waits = await asyncio.gather(*(w.take("10.0.0.1") for w in workers
                                   for _ in range(10)))
    assert waits.count(0.0) == 5  # not 5 per worker
    waits = await asyncio.gather(*(w.take(f"10.1.0.{i}") for i, w in
                                   enumerate(workers * 5)))
    assert waits.count(0.0) == 3  # what the instance's 8 had left


async def test_rows_expire_when_their_bucket_is_full_again_and_are_purged(
    stores: list[SqliteStore], clock: Clock
) -> None:
    store = stores[0]
    budget = shared(store, Rate(0.5, 3), Rate(1.0, 5))
    now = clock()
    assert await budget.take("10.0.0.1") == 0.0
    rows = {record.key: record for record in await store.items(LOOKUP_BUDGETS)}
    client_key, instance_key = budget.keys("10.0.0.1")
    assert rows[client_key].expires_at == pytest.approx(now + 2.0)  # 1 unit at 0.5/s
    assert rows[instance_key].expires_at == pytest.approx(now + 1.0)
    clock.advance(2.5)
    assert await store.items(LOOKUP_BUDGETS) == []
    await store.purge()
    with sqlite3.connect(store.path) as conn:
        count = conn.execute("SELECT count(*) FROM entries WHERE ns = ?",
                             (LOOKUP_BUDGETS,)).fetchone()[0]
    assert count == 0
    assert [await budget.take("10.0.0.1") for _ in range(4)][3] > 0.0  # full again


async def test_a_flood_of_addresses_writes_rows_only_while_the_instance_allows(
    stores: list[SqliteStore], clock: Clock
) -> None:
    budget = shared(stores[0], Rate(1.0, 20), Rate(0.001, 5))
    waits = [await budget.take(f"10.{i // 250}.{i % 250}.1") for i in range(500)]
    assert waits.count(0.0) == 5
    assert len(await stores[0].items(LOOKUP_BUDGETS)) == 5 + 1  # five clients, the instance


async def test_a_bucket_known_empty_is_refused_without_asking_the_store_until_its_refill(
    stores: list[SqliteStore], clock: Clock
) -> None:
    budget = shared(stores[0], Rate(0.5, 1), Rate(1000, 100_000))
    assert await budget.take("10.0.0.1") == 0.0
    assert await budget.take("10.0.0.1") == pytest.approx(2.0)  # asked: empty
    stores[0]._conn.close()  # type: ignore[union-attr]  # from now on, asking fails
    clock.advance(1.5)
    assert await budget.take("10.0.0.1") == pytest.approx(0.5)  # known: not asked
    assert stores[0].healthy
    clock.advance(0.5)  # the refill is due: only the store can say who takes it
    with pytest.raises(StoreUnavailable):
        await budget.take("10.0.0.1")


async def test_the_table_of_buckets_known_empty_is_bounded(
    stores: list[SqliteStore], clock: Clock
) -> None:
    budget = SharedBudgets(stores[0], "api", Rate(0.001, 1), Rate(1000, 100_000), clock,
                           max_known=32)
    for i in range(100):
        assert await budget.take(f"10.0.0.{i}") == 0.0
        assert await budget.take(f"10.0.0.{i}") > 0.0
    assert len(budget._empty_until) <= 32
    assert await budget.take("10.0.0.0") > 0.0  # forgotten here, still empty there


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(), st.sampled_from([
    "nan 0", "inf 0", "-inf 0", "1e308 0", "-1e308 0", "99 1e308", "2 -1e308", "3", " "])))
async def test_a_row_that_is_not_a_bucket_never_raises_nor_grants_more_than_the_burst(
    stores: list[SqliteStore], clock: Clock, value: str
) -> None:
    budget = shared(stores[0], Rate(0.001, 3), Rate(0.001, 1000))
    client_key, _ = budget.keys("10.9.9.9")
    await stores[0].put(LOOKUP_BUDGETS, client_key, value, clock() + 60)
    waits = [await budget.take("10.9.9.9") for _ in range(4)]
    assert waits.count(0.0) <= 3
    assert all(0.0 <= wait <= 1000.0 for wait in waits)


async def test_a_store_that_fails_raises_store_unavailable(
    stores: list[SqliteStore], clock: Clock
) -> None:
    stores[0]._conn.close()  # type: ignore[union-attr]  # the database goes away
    with pytest.raises(StoreUnavailable):
        await shared(stores[0], Rate(1, 1), Rate(1, 1)).take("10.0.0.1")


async def test_the_local_table_of_clients_is_bounded(clock: Clock) -> None:
    local = LookupBudgets(Rate(0.001, 1), Rate(1000, 100_000), max_clients=32)
    assert [local.take(f"10.0.0.{i}", clock()) for i in range(200)] == [0.0] * 200
    assert len(local._clients) <= 32


FALLBACKS = "clerk_gateway_state_fallbacks_total"


async def test_with_the_store_gone_a_gateway_falls_back_to_its_own_bounded_budget(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await machine_gateway(make_gateway, clerk, machine_tokens={
        "client_lookup_burst": 3, "client_lookups_per_second": 0.001})
    known = clerk.api_key("user_known")
    statuses = [(await gw.get("/keys", known)).status for _ in range(20)]
    assert statuses == [200] * 20  # one look-up: a known key spends nothing more
    assert (await gw.get("/keys", "ak_guess_1")).status == 401
    sample = {"component": "lookup_budgets"}
    assert gw.gateway.registry.get_sample_value(FALLBACKS, sample) in (None, 0.0)
    assert gw.gateway.state is not None
    gw.gateway.state._conn.close()  # type: ignore[union-attr]  # the database goes away
    assert (await gw.get("/keys", known)).status == 200  # never asks the store or the budget
    assert gw.gateway.registry.get_sample_value(FALLBACKS, sample) in (None, 0.0)
    answers = []
    for i in range(5):
        response = await gw.get("/keys", f"ak_after_{i}")
        answers.append((response.status, (await response.json())["reason"]))
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
    # This worker's own buckets, full: three look-ups, then refused. Never unlimited.
    assert answers == [(401, "invalid_credential")] * 3 + [(429, "token_lookups_exhausted")] * 2
    assert clerk.hits["api_keys_verify"] == 1 + 1 + 3
    assert gw.gateway.registry.get_sample_value(FALLBACKS, sample) == 5.0


async def test_concurrent_requests_with_one_new_key_spend_one_unit_of_the_shared_budget(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await machine_gateway(make_gateway, clerk, machine_tokens={
        "client_lookup_burst": 2, "client_lookups_per_second": 0.001})
    clerk.delay = 0.3  # Clerk answers slowly: every request arrives while the budget is asked
    key = clerk.api_key("user_new")
    responses = await asyncio.gather(*(gw.get("/keys", key) for _ in range(10)))
    assert [response.status for response in responses] == [200] * 10
    assert clerk.hits["api_keys_verify"] == 1
    assert (await gw.get("/keys", "ak_guess_1")).status == 401  # the second unit was left
    refused = await asyncio.gather(*(gw.get("/keys", "ak_guess_2") for _ in range(5)))
    assert [response.status for response in refused] == [429] * 5  # one refusal, shared
    assert clerk.hits["api_keys_verify"] == 2
