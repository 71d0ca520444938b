"""Helpers for proxy tests: a recording upstream, raw HTTP, and a gateway in a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def raw_headers(request: web.Request) -> list[tuple[str, str]]:
    """The request's headers exactly as received: names as sent, repeats kept."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def values(self, name: str) -> list[str]:
        """Every value of a header (case-insensitive, exact name)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def normalised(self, name: str) -> list[str]:
        """Every value of headers whose name reads as `name` with `_` taken as `-`."""
        want = name.lower().replace("_", "-")
        return [v for k, v in self.headers if k.lower().replace("_", "-") == want]


@dataclass
class Upstream:
    """A real aiohttp upstream that records what reaches it."""

    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    uploads: list[int] = field(default_factory=list)
    ws_queries: list[str] = field(default_factory=list)
    ws_closed: list[int | None] = field(default_factory=list)
    url: str = ""

    def app(self) -> web.Application:
        """The upstream's routes."""
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_get("/sse", self._sse)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/hold", self._hold)
        app.router.add_get("/reset", self._reset)
        app.router.add_get("/broken", self._broken)
        app.router.add_get("/cookies", self._cookies)
        app.router.add_get("/gzip", self._gzip)
        app.router.add_get("/download", self._download)
        app.router.add_post("/upload", self._upload)
        app.router.add_get("/ws", self._ws)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.raw_path, raw_headers(request),
                              body))
        return web.json_response({"path": request.raw_path, "bytes": len(body)},
                                 headers={"X-Upstream": "yes"})

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await asyncio.wait_for(self.release.wait(), 20)
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    async def _slow(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(request.method, request.raw_path, raw_headers(request)))
        await asyncio.sleep(float(request.query.get("seconds", "5")))
        return web.Response(text="slow done")

    async def _hold(self, request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return web.Response(text="held")

    async def _reset(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(1)
        return web.Response(text="never")

    async def _broken(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial body ")
        await asyncio.sleep(0.2)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def _cookies(self, request: web.Request) -> web.Response:
        response = web.Response(text="cookies", status=202, headers={
            "Connection": "X-Secret", "X-Secret": "hop", "Keep-Alive": "timeout=5",
            "X-Kept": "end-to-end"})
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    async def _gzip(self, request: web.Request) -> web.Response:
        import gzip

        return web.Response(body=gzip.compress(b"compressed payload"),
                            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        block = b"d" * MiB
        left = size
        while left > 0:
            await response.write(block[: min(left, MiB)])
            left -= MiB
        await response.write_eof()
        return response

    async def _upload(self, request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        self.uploads.append(total)
        return web.json_response({"bytes": total})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self.ws_queries.append(request.query_string)
        self.seen.append(Seen("WS", request.raw_path, raw_headers(request), b""))
        ws = web.WebSocketResponse(protocols=("chat",), autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"bye")
                    break
                await ws.send_str("echo:" + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        self.ws_closed.append(ws.close_code)
        return ws


async def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to a loopback port and read the whole reply (connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def status_of(reply: bytes) -> int:
    """The status code of a raw HTTP reply."""
    return int(reply.split(b" ", 2)[1])


async def generate(total: int, block: int = MiB) -> AsyncIterator[bytes]:
    """Yield `total` bytes in blocks, generated on the fly."""
    chunk = b"u" * block
    left = total
    while left > 0:
        yield chunk[: min(left, block)]
        left -= block


@dataclass
class GatewayProcess:
    """A gateway started as `python -m gateway serve` in a subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path

    @property
    def url(self) -> str:
        """The public listener's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The admin listener's base URL."""
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        """What the gateway printed so far."""
        return self.log_path.read_text(errors="replace")

    async def stop(self, timeout: float = 45.0) -> int:
        """SIGTERM, then wait; returns the exit code.

        The wait runs off the event loop, so the test's in-process issuer and upstream keep
        answering while the gateway drains (a blocked test loop would stall the gateway's
        in-flight calls to them). It outlasts the gateway's own shutdown watchdog (drain +
        6 s), so a wedged stop fails with the watchdog's report in the log.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(
                f"gateway did not stop in {timeout:g} s:\n{self.log()[-6000:]}") from None

    def kill_all(self) -> None:
        """SIGKILL the gateway and every worker it started (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def peak_rss_kib(self, pid: int | None = None) -> int:
        """VmHWM (peak resident set size) of the gateway process, in KiB."""
        status = Path(f"/proc/{pid or self.proc.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


async def start_gateway_process(
    env: dict[str, str], port: int, admin_port: int, tmp: Path, *args: str,
    ready_timeout: float = 30.0,
) -> GatewayProcess:
    """Start the gateway CLI with env and wait until its admin listener is ready."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("GATEWAY_", "CLERK_")) or k == "GATEWAY_EVENT_LOOP"}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    full_env.update({
        "PYTHONPATH": str(ROOT),
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_STATE_DIR": str(tmp / "state"),  # the test's own; pass one to share it
        **env,
    })
    log_path = tmp / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", *args],
            env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp),
            start_new_session=True)  # one group: a failed stop kills the workers too
    gateway = GatewayProcess(proc, port, admin_port, log_path)
    deadline = time.monotonic() + ready_timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited {proc.returncode}:\n{gateway.log()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{gateway.admin_url}/readyz") as response:
                    if response.status == 200:
                        return gateway
            if time.monotonic() > deadline:
                await gateway.stop()
                raise AssertionError(f"gateway not ready:\n{gateway.log()}")
            await asyncio.sleep(0.1)


def json_of(text: str) -> Any:
    """Parse JSON text (for readable asserts)."""
    import json

    return json.loads(text)


async def cut_mid_body(request: web.Request) -> web.StreamResponse:
    """An upstream handler that promises 10 MiB, sends 1 MiB, then resets the connection."""
    response = web.StreamResponse(headers={"Content-Length": str(10 * MiB)})
    await response.prepare(request)
    await response.write(b"x" * MiB)
    assert request.transport is not None
    request.transport.abort()
    return response
