"""Two gateway processes (two hosts' worth: separate state directories) sharing one real
Redis: a revocation sent to one is enforced by the other within a second, on every request."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.devissuer import DevIssuer
from tests.conftest import free_port
from tests.redis_support import RedisServer, redis_server
from tests.revocation_support import ADMIN_TOKEN, admin_headers

__all__ = ["redis_server"]

ROOT = Path(__file__).resolve().parent.parent


class Replica:
    """One `python -m gateway serve` process."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, admin_port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"


async def _until(probe: Callable[[], Awaitable[bool]], deadline: float) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if await probe():
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
async def replicas(
    clerk: DevIssuer, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[Replica, Replica, aiohttp.ClientSession]]:
    """Two gateway processes trusting the fake Clerk, on one Redis, both ready."""
    started: list[Replica] = []
    async with aiohttp.ClientSession() as http:
        try:
            for index in range(2):
                port, admin_port = free_port(), free_port()
                env = {
                    **os.environ,
                    "PYTHONPATH": str(ROOT),
                    "CLERK_ISSUER": clerk.issuer,
                    "GATEWAY_REDIS_URL": redis_server.url,
                    "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
                    "GATEWAY_LISTEN": f"127.0.0.1:{port}",
                    "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
                    "GATEWAY_LOG_LEVEL": "WARNING",
                    "GATEWAY_STATE_DIR": str(tmp_path / f"state-{index}"),
                }
                for name in ("GATEWAY_CONFIG", "CLERK_SECRET_KEY", "CLERK_PUBLISHABLE_KEY"):
                    env.pop(name, None)
                log = (tmp_path / f"replica-{index}.log").open("wb")
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway", "serve", cwd=str(ROOT), env=env,
                    stdout=log, stderr=log)
                started.append(Replica(process, port, admin_port))
            for replica in started:

                async def is_ready(replica: Replica = replica) -> bool:
                    if replica.process.returncode is not None:
                        raise AssertionError("a gateway process exited during start-up")
                    try:
                        async with http.get(replica.admin_url + "/readyz") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                if not await _until(is_ready, 30.0):  # the log says why (it was lost once)
                    index = started.index(replica)
                    tail = (tmp_path / f"replica-{index}.log").read_bytes()[-4000:]
                    raise AssertionError(f"gateway process {index} not ready in 30 s; its log "
                                         f"ends:\n{tail.decode(errors='replace')}")
            yield started[0], started[1], http
        finally:
            for replica in started:
                if replica.process.returncode is None:
                    replica.process.send_signal(signal.SIGTERM)
            for replica in started:
                try:
                    await asyncio.wait_for(replica.process.wait(), 15)
                except TimeoutError:
                    replica.process.kill()
                    await replica.process.wait()


PROPAGATION_SECONDS = 1.0  # revocation.local_ttl_seconds: the promise under test


async def _answers(replica: Replica, headers: dict[str, str], count: int = 12) -> list[Any]:
    """(status, reason) of `count` requests, each on a fresh connection."""
    answers = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(count):
            async with http.get(replica.url + "/api", headers=headers) as response:
                body = await response.json(content_type=None) if response.status >= 400 else {}
                answers.append((response.status, body.get("reason")))
    return answers


@pytest.mark.peers
async def test_revocation_on_one_process_is_enforced_by_the_other(
    clerk: DevIssuer, replicas: tuple[Replica, Replica, aiohttp.ClientSession]
) -> None:
    first, second, http = replicas
    token = clerk.token(sub="user_1", sid="sess_1", lifetime=600)
    bearer = {"Authorization": f"Bearer {token}"}
    allowed = [(200, None)] * 12
    assert await _answers(first, bearer) == allowed
    assert await _answers(second, bearer) == allowed  # verified, "not revoked" cached there

    async with http.post(first.admin_url + "/admin/revocations", headers=admin_headers(),
                         json={"kind": "session", "id": "sess_1"}) as response:
        assert response.status == 201
    await asyncio.sleep(PROPAGATION_SECONDS)
    assert await _answers(second, bearer) == [(401, "revoked")] * 12
    assert await _answers(first, bearer) == [(401, "revoked")] * 12

    async with http.delete(second.admin_url + "/admin/revocations/session/sess_1",
                           headers=admin_headers()) as response:
        assert response.status == 200
    await asyncio.sleep(PROPAGATION_SECONDS)
    assert await _answers(first, bearer) == allowed
    assert await _answers(second, bearer) == allowed
