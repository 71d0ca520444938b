"""Machine credentials through `serve` with several workers sharing one state store: one
Clerk call per token for all workers together, asserting EVERY request on a fresh
connection and showing, from /proc, that every worker answered some of them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.devissuer import DevIssuer
from tests.machine_support import ALL_TYPES, ROUTES, machine_env
from tests.proxy_support import Upstream
from tests.test_shared_state_workers import Workers, _all, serving
from tests.worker_support import every_worker

WORKER_COUNTS = pytest.mark.parametrize("count", [None, 4], ids=["default-workers", "4-workers"])


@contextlib.asynccontextmanager
async def machine_workers(clerk: DevIssuer, upstream: Upstream, tmp_path: Path,
                          count: int | None = None, **machine_tokens: Any
                          ) -> AsyncIterator[Workers]:
    """`serve` accepting every token type (one route per type), its workers all listening."""
    args = ("--workers", str(count)) if count else ()
    config: dict[str, Any] = {"token_types": ALL_TYPES, "routes": ROUTES}
    if machine_tokens:
        config["machine_tokens"] = machine_tokens
    async with serving(clerk, upstream, tmp_path, *args, config=config,
                       env=machine_env(clerk)) as running:
        assert len(running.pids) == (count or len(running.pids)) >= 2
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def on_every_worker(running: Workers, token: str) -> list[tuple[int, Any]]:
    """Fresh-connection requests to the API-key route until every worker answered three."""

    async def send() -> tuple[tuple[int, str | None], int]:
        return await running.public("/keys", bearer(token))

    return await every_worker(send, running.pids)


@WORKER_COUNTS
async def test_hundreds_of_requests_with_one_api_key_make_one_call_across_workers(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path, count: int | None
) -> None:
    async with machine_workers(clerk, upstream, tmp_path, count) as running:
        auth = bearer(clerk.api_key("org_shared", scopes=("write",)))
        answers = [await running.public("/keys/0", auth)]
        for batch in range(15):  # 300 more, 20 at a time, each on a fresh connection
            answers += await asyncio.gather(*(running.public(f"/keys/{batch}-{i}", auth)
                                              for i in range(20)))
        assert len(answers) == 301
        _all([(pid, result) for result, pid in answers], (200, None))
        assert {pid for _result, pid in answers} == set(running.pids)
        assert clerk.hits["api_keys_verify"] == 1


async def test_a_shared_verdict_is_asked_again_once_when_its_cache_expires(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    ttl = 8.0
    async with machine_workers(clerk, upstream, tmp_path, cache_ttl_seconds=ttl) as running:
        key = clerk.api_key("user_ttl")
        asked_at = time.monotonic()
        _all(await on_every_worker(running, key), (200, None))
        assert clerk.hits["api_keys_verify"] == 1
        await asyncio.sleep(max(0.0, asked_at + ttl + 0.5 - time.monotonic()))
        _all(await on_every_worker(running, key), (200, None))
        assert clerk.hits["api_keys_verify"] == 2  # one worker asked again, for all


@WORKER_COUNTS
async def test_concurrent_first_requests_across_workers_make_one_call(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path, count: int | None
) -> None:
    async with machine_workers(clerk, upstream, tmp_path, count) as running:
        auth = bearer(clerk.api_key("user_burst"))
        clerk.delay = 0.5  # Clerk answers slowly: every request arrives while it is asked
        requests = 8 * len(running.pids)  # 16 with the default two workers
        answers = await asyncio.gather(*(running.public("/keys", auth)
                                         for _ in range(requests)))
        assert [result for result, _pid in answers] == [(200, None)] * requests
        assert {pid for _result, pid in answers} == set(running.pids)
        assert clerk.hits["api_keys_verify"] == 1


async def test_a_429_stops_verify_calls_from_every_worker_until_retry_after(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    async with machine_workers(clerk, upstream, tmp_path) as running:
        clerk.machine_fail_status, clerk.retry_after = 429, 12
        first = bearer(clerk.api_key("user_first"))
        assert (await running.public("/keys", first))[0] == (
            503, "token_verification_unavailable")
        limited_at = time.monotonic()
        assert clerk.hits["api_keys_verify"] == 1
        later = clerk.api_key("user_later")
        _all(await on_every_worker(running, later), (503, "token_verification_unavailable"))
        assert time.monotonic() - limited_at < 12, "the check outlived Retry-After itself"
        assert clerk.hits["api_keys_verify"] == 1  # no worker called Clerk inside Retry-After
        clerk.machine_fail_status = None
        await asyncio.sleep(max(0.0, limited_at + 12.5 - time.monotonic()))
        _all(await on_every_worker(running, later), (200, None))
        assert clerk.hits["api_keys_verify"] == 2  # one call again, its verdict shared by all


@WORKER_COUNTS
async def test_negative_verdicts_of_a_garbage_key_flood_are_shared_by_every_worker(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path, count: int | None
) -> None:
    async with machine_workers(clerk, upstream, tmp_path, count) as running:
        garbage = [f"ak_garbage_{i:04d}" for i in range(10)]
        for token in garbage:  # each one asked on every worker, three times each
            _all(await on_every_worker(running, token), (401, "invalid_credential"))
        assert clerk.hits["api_keys_verify"] == len(garbage)  # one call per garbage key
        _all(await on_every_worker(running, clerk.api_key("user_fine")), (200, None))
        assert clerk.hits["api_keys_verify"] == len(garbage) + 1
