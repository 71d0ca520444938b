"""Look-up budgets through `serve` with several workers sharing one state store: a client's
burst and the instance's are the configured ones for every worker together, and a store that
refuses the budget's writes leaves each worker its own bounded budget, counted in the
metrics. Every request on a fresh connection, every answer asserted, every worker seen."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from gateway.devissuer import DevIssuer
from gateway.state.budget_share import LOOKUP_BUDGETS
from gateway.state.schema import database_path
from tests.machine_support import ALL_TYPES, ROUTES, machine_env
from tests.proxy_support import Upstream
from tests.test_machine_shared_workers import WORKER_COUNTS, bearer
from tests.test_shared_state_workers import Workers, serving
from tests.worker_support import every_worker

INVALID = (401, "invalid_credential")
EXHAUSTED = (429, "token_lookups_exhausted")
NO_REFILL = 0.001  # one unit per 1000 s: nothing refills while a test runs
CLIENT_BURST_3 = {"client_lookup_burst": 3, "client_lookups_per_second": NO_REFILL}
FALLBACKS = re.compile(
    r'^clerk_gateway_state_fallbacks_total\{component="lookup_budgets"\} (\S+)$', re.M)


@contextlib.asynccontextmanager
async def budget_workers(clerk: DevIssuer, upstream: Upstream, tmp_path: Path,
                         count: int | None, machine_tokens: dict[str, Any],
                         **extra: Any) -> AsyncIterator[Workers]:
    """`serve` accepting API keys on /keys with these budgets, its workers all listening."""
    args = ("--workers", str(count)) if count else ()
    config = {"token_types": ALL_TYPES, "routes": ROUTES, "machine_tokens": machine_tokens,
              **extra}
    async with serving(clerk, upstream, tmp_path, *args, config=config,
                       env=machine_env(clerk)) as running:
        assert len(running.pids) == (count or len(running.pids)) >= 2
        yield running


class Guesses:
    """Requests with a new garbage API key each (none has a cached verdict), from one client
    (the peer) or, ``spread``, each from a new address (X-Forwarded-For, trusted peer)."""

    def __init__(self, running: Workers, spread: bool = False) -> None:
        self._running = running
        self._spread = spread
        self._serial = itertools.count()

    async def send(self) -> tuple[tuple[int, str | None], int]:
        """One guess on a fresh connection: ((status, reason), the worker that answered)."""
        n = next(self._serial)
        forwarded = {"X-Forwarded-For": f"10.{n // 250}.{n % 250}.7"} if self._spread else {}
        return await self._running.public(
            "/keys", {**bearer(f"ak_guess_{n:05d}"), **forwarded})

    async def until_every_worker_answered(self) -> list[tuple[int, Any]]:
        """Guesses, one at a time, until every worker answered three: (pid, answer) each."""
        return await every_worker(self.send, self._running.pids)


def answers(results: list[tuple[int, Any]]) -> list[Any]:
    return [answer for _pid, answer in results]


@WORKER_COUNTS
async def test_a_client_s_burst_is_the_configured_one_across_all_workers(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path, count: int | None
) -> None:
    async with budget_workers(clerk, upstream, tmp_path, count, CLIENT_BURST_3) as running:
        results = await Guesses(running).until_every_worker_answered()
        assert answers(results) == [INVALID] * 3 + [EXHAUSTED] * (len(results) - 3)
        assert clerk.hits["api_keys_verify"] == 3  # not 3 per worker


@WORKER_COUNTS
async def test_concurrent_guesses_on_every_worker_get_exactly_the_burst(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path, count: int | None
) -> None:
    async with budget_workers(clerk, upstream, tmp_path, count, CLIENT_BURST_3) as running:
        guesses = Guesses(running)
        requests = 8 * len(running.pids)
        results = await asyncio.gather(*(guesses.send() for _ in range(requests)))
        got = [answer for answer, _pid in results]
        assert sorted(got) == [INVALID] * 3 + [EXHAUSTED] * (requests - 3), got
        assert {pid for _answer, pid in results} == set(running.pids)
        assert clerk.hits["api_keys_verify"] == 3


@WORKER_COUNTS
async def test_the_instance_budget_is_the_configured_one_across_all_workers(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path, count: int | None
) -> None:
    async with budget_workers(clerk, upstream, tmp_path, count,
                              {"lookup_burst": 5, "lookups_per_second": NO_REFILL},
                              proxy={"trusted_proxies": ["127.0.0.1/32"]}) as running:
        guesses = Guesses(running, spread=True)  # each guess from a new client address
        results = await guesses.until_every_worker_answered()
        assert answers(results) == [INVALID] * 5 + [EXHAUSTED] * (len(results) - 5)
        assert clerk.hits["api_keys_verify"] == 5


async def fallbacks(running: Workers) -> float:
    """The look-ups every worker budgeted on its own (the admin scrape sums the workers)."""
    async with aiohttp.ClientSession() as session, session.get(
            running.process.admin_url + "/metrics") as response:
        match = FALLBACKS.search(await response.text())
    return float(match.group(1)) if match else 0.0


def refuse_budget_writes(state: Path, refuse: bool) -> None:
    """Make the real database refuse (or accept again) every write of the budgets' rows, as
    a full disk or a lock held too long would; other namespaces are untouched."""
    with sqlite3.connect(database_path(state), timeout=10, isolation_level=None) as conn:
        for event in ("INSERT", "UPDATE"):
            name = f"refuse_budgets_{event.lower()}"
            if refuse:
                conn.execute(
                    f"CREATE TRIGGER {name} BEFORE {event} ON entries "
                    f"WHEN NEW.ns = '{LOOKUP_BUDGETS}' "
                    "BEGIN SELECT RAISE(ABORT, 'lookup budgets unavailable'); END")
            else:
                conn.execute(f"DROP TRIGGER {name}")
    conn.close()


@WORKER_COUNTS
async def test_with_the_store_refusing_each_worker_spends_its_own_budget_counted(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path, count: int | None
) -> None:
    async with budget_workers(clerk, upstream, tmp_path, count, CLIENT_BURST_3) as running:
        refuse_budget_writes(tmp_path / "state", True)
        guesses = Guesses(running)
        results = await guesses.until_every_worker_answered()
        for pid in running.pids:  # each worker's own buckets: 3 look-ups, then refused
            own = [answer for who, answer in results if who == pid]
            assert own == [INVALID] * 3 + [EXHAUSTED] * (len(own) - 3), (pid, own)
        workers = len(running.pids)
        assert clerk.hits["api_keys_verify"] == 3 * workers  # bounded, never unlimited
        counted = await fallbacks(running)
        assert counted == len(results)  # every attempt counted

        refuse_budget_writes(tmp_path / "state", False)  # the store answers again:
        results = await guesses.until_every_worker_answered()  # one budget for all, again
        assert answers(results) == [INVALID] * 3 + [EXHAUSTED] * (len(results) - 3)
        assert clerk.hits["api_keys_verify"] == 3 * workers + 3
        assert await fallbacks(running) == counted


async def test_with_shared_state_off_each_worker_keeps_its_own_budget(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    async with budget_workers(clerk, upstream, tmp_path, None, CLIENT_BURST_3,
                              shared_state=False) as running:
        results = await Guesses(running).until_every_worker_answered()
        for pid in running.pids:
            own = [answer for who, answer in results if who == pid]
            assert own == [INVALID] * 3 + [EXHAUSTED] * (len(own) - 3), (pid, own)
        assert clerk.hits["api_keys_verify"] == 3 * len(running.pids)
        assert await fallbacks(running) == 0.0  # per worker by choice, not a fallback
