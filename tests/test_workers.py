"""`serve --workers N`: several processes on one port, metrics summed across them, clean stop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from gateway.devissuer import DevIssuer
from gateway.workers import worker_count, worker_index
from tests.conftest import free_port
from tests.proxy_support import Upstream, start_gateway_process
from tests.worker_support import wait_listening

DECISIONS = re.compile(
    r'^clerk_gateway_decisions_total\{door="proxy",outcome="allow",reason="ok",'
    r'route="default"\} (\S+)$', re.M)


async def test_two_workers_share_the_port_and_metrics_sum_across_them(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    port, admin_port = free_port(), free_port()
    gateway = await start_gateway_process(
        {"CLERK_ISSUER": clerk.issuer, "GATEWAY_UPSTREAM": upstream.url},
        port, admin_port, tmp_path, "--workers", "2")
    try:
        # Each worker holds its own listening sockets on the one public and admin ports.
        workers = await wait_listening(gateway.proc.pid, 2, port, admin_port)

        auth = {"Authorization": f"Bearer {clerk.token(lifetime=600)}"}
        requests = 60
        answered_by: set[str] = set()
        # A fresh connection per request, so the kernel spreads them over the workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(requests):
                async with session.get(f"{gateway.url}/hello", headers=auth) as response:
                    assert response.status == 200
            for _ in range(40):
                async with session.get(f"{gateway.admin_url}/healthz") as response:
                    answered_by.add(response.headers["X-Gateway-Worker"])
            # Each worker adds its batched counts every 0.25 s: wait (bounded) for the
            # totals to settle, then every scrape, whichever worker answers, must agree.
            settle_deadline = asyncio.get_running_loop().time() + 5
            while True:
                async with session.get(f"{gateway.admin_url}/metrics") as response:
                    text = await response.text()
                settled = DECISIONS.search(text)
                if settled and float(settled.group(1)) == requests:
                    break
                assert asyncio.get_running_loop().time() < settle_deadline, text[:2000]
                await asyncio.sleep(0.1)
            scrapes = []
            for _ in range(6):
                async with session.get(f"{gateway.admin_url}/metrics") as response:
                    scrapes.append(await response.text())
        assert answered_by == {str(pid) for pid in workers}, (answered_by, workers)
        assert len(upstream.seen) == requests
        for text in scrapes:  # whichever worker answers, the totals cover both
            match = DECISIONS.search(text)
            assert match, text[:2000]
            assert float(match.group(1)) == requests
        assert "clerk_gateway_upstream_duration_seconds_count" in scrapes[0]
    finally:
        code = await gateway.stop()
    assert code == 0, gateway.log()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text()


async def test_worker_that_fails_at_startup_stops_the_parent_non_zero(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    busy = free_port()
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", busy))  # bound without SO_REUSEPORT: workers cannot share it
    blocker.listen()
    try:
        # The parent finds the port taken before starting any worker: one line, exit 2.
        with pytest.raises(AssertionError, match="gateway exited 2"):
            await start_gateway_process(
                {"CLERK_ISSUER": clerk.issuer, "GATEWAY_UPSTREAM": upstream.url},
                busy, free_port(), tmp_path, "--workers", "2", ready_timeout=30)
    finally:
        blocker.close()


async def test_sigterm_to_the_parent_drains_workers(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    gateway = await start_gateway_process(
        {"CLERK_ISSUER": clerk.issuer, "GATEWAY_UPSTREAM": upstream.url},
        port, free_port(), tmp_path, "--workers", "2")
    await wait_listening(gateway.proc.pid, 2, port)
    auth = {"Authorization": f"Bearer {clerk.token()}"}
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(
            session.get(f"{gateway.url}/slow?seconds=1.5", headers=auth))
        for _ in range(100):
            if upstream.seen:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        gateway.proc.send_signal(signal.SIGTERM)
        response = await asyncio.wait_for(pending, 15)
        assert response.status == 200
        assert await response.text() == "slow done"
    code = await asyncio.get_running_loop().run_in_executor(None, gateway.proc.wait, 20)
    assert code == 0, gateway.log()


def test_worker_count_and_index() -> None:
    assert worker_count(3, 8) == 3
    assert worker_count(None, 4) == 4
    assert worker_count(None, 0) == (os.cpu_count() or 1)
    assert worker_index({"GATEWAY_WORKER_INDEX": "2"}) == 2
    assert worker_index({}) is None
