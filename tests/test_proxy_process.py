"""The proxy as a real process: 1 GiB streamed both ways in bounded memory, SIGTERM drain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from gateway.devissuer import DevIssuer
from tests.conftest import free_port
from tests.proxy_support import GatewayProcess, MiB, Upstream, generate, start_gateway_process

GiB = 1024 * MiB
PEAK_RSS_LIMIT_KIB = 200 * 1024


async def start(clerk: DevIssuer, upstream: Upstream, tmp_path: Path,
                **env: str) -> GatewayProcess:
    return await start_gateway_process(
        {"CLERK_ISSUER": clerk.issuer, "GATEWAY_UPSTREAM": upstream.url, **env},
        free_port(), free_port(), tmp_path, "--workers", "1")


async def test_one_gib_up_and_down_in_bounded_memory(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    gateway = await start(clerk, upstream, tmp_path)
    auth = {"Authorization": f"Bearer {clerk.token(lifetime=600)}"}
    timeout = aiohttp.ClientTimeout(total=300)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(f"{gateway.url}/upload", data=generate(GiB),
                                    headers=auth) as response:
                assert response.status == 200
                assert (await response.json()) == {"bytes": GiB}
            received = 0
            async with session.get(f"{gateway.url}/download?size={GiB}",
                                   headers=auth) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == str(GiB)
                async for chunk in response.content.iter_any():
                    received += len(chunk)
            assert received == GiB
        peak = gateway.peak_rss_kib()
        print(f"gateway peak RSS: {peak} KiB")
        assert upstream.uploads == [GiB]
        assert peak < PEAK_RSS_LIMIT_KIB, f"gateway peak RSS {peak} KiB"
    finally:
        assert await gateway.stop() == 0, gateway.log()


async def test_sigterm_drains_an_in_flight_request_then_exits_zero(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    gateway = await start(clerk, upstream, tmp_path, GATEWAY_SHUTDOWN_TIMEOUT="20")
    auth = {"Authorization": f"Bearer {clerk.token()}"}
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(
            session.get(f"{gateway.url}/slow?seconds=1.5", headers=auth))
        for _ in range(100):  # wait until the request is in flight at the gateway
            async with session.get(f"{gateway.admin_url}/metrics") as metrics:
                text = await metrics.text()
            if 'clerk_gateway_in_flight_requests{door="proxy"} 1.0' in text:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("request never reached the gateway")
        gateway.proc.send_signal(__import__("signal").SIGTERM)
        response = await asyncio.wait_for(pending, 15)
        assert response.status == 200
        assert await response.text() == "slow done"
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{gateway.url}/x", headers=auth)  # no longer accepting
    code = await asyncio.get_running_loop().run_in_executor(None, gateway.proc.wait, 15)
    assert code == 0, gateway.log()


async def test_drain_deadline_cuts_off_requests_that_take_too_long(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    gateway = await start(clerk, upstream, tmp_path, GATEWAY_SHUTDOWN_TIMEOUT="0.5")
    auth = {"Authorization": f"Bearer {clerk.token()}"}
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(session.get(f"{gateway.url}/hold", headers=auth))
        await asyncio.wait_for(_until_in_flight(session, gateway), 10)
        gateway.proc.send_signal(__import__("signal").SIGTERM)
        with pytest.raises(aiohttp.ClientError):
            response = await asyncio.wait_for(pending, 15)
            await response.read()
    code = await asyncio.get_running_loop().run_in_executor(None, gateway.proc.wait, 15)
    assert code == 0, gateway.log()


async def _until_in_flight(session: aiohttp.ClientSession, gateway: GatewayProcess) -> None:
    while True:
        async with session.get(f"{gateway.admin_url}/metrics") as metrics:
            if 'clerk_gateway_in_flight_requests{door="proxy"} 1.0' in await metrics.text():
                return
        await asyncio.sleep(0.05)


async def test_sigterm_closes_an_open_websocket_with_1001_then_exits_zero(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    gateway = await start(clerk, upstream, tmp_path, GATEWAY_SHUTDOWN_TIMEOUT="10")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{gateway.url}/ws", autoping=False,
                                      headers={"Authorization": f"Bearer {clerk.token()}"})
        await ws.send_str("before")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "echo:before"
        gateway.proc.send_signal(__import__("signal").SIGTERM)
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        assert msg.data == 1001  # going away
        assert msg.extra == "gateway shutting down"
        await ws.close()
    code = await asyncio.get_running_loop().run_in_executor(None, gateway.proc.wait, 15)
    assert code == 0, gateway.log()
    for _ in range(100):  # the upstream side is closed too, not left dangling
        if upstream.ws_closed:
            break
        await asyncio.sleep(0.05)
    assert upstream.ws_closed == [1001]
