"""A real browser (Debian's headless Chromium, driven over the DevTools protocol) calling an API
through the gateway from a page on another origin: allowed origins read the JSON, others can't."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from itertools import count
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running
from tests.peer_support import tool_missing

pytestmark = pytest.mark.peers

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
)
DEADLINE = 60.0  # generous: Chromium starts slowly on a loaded machine


def chromium_binary() -> str:
    """Debian's chromium; fails under CI when missing, else skips with an install hint."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or tool_missing(
        "chromium not found: install it with `apt-get install -y chromium`")


class Page:
    """One browser tab, driven over its DevTools websocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are skipped)."""
        ident = next(self._ids)
        await self._socket.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(DEADLINE):
            while True:
                message = json.loads((await self._socket.receive()).data)
                if message.get("id") == ident:
                    assert "error" not in message, message
                    return dict(message["result"])

    async def open(self, url: str) -> None:
        """Navigate and wait until the document has loaded."""
        await self.call("Page.navigate", url=url)
        async with asyncio.timeout(DEADLINE):
            while await self.evaluate("document.readyState") != "complete":
                await asyncio.sleep(0.05)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Page]:
    """Headless Chromium with a fresh profile, one tab open on about:blank."""
    binary = chromium_binary()
    profile = tmp_path / "chromium-profile"
    process = await asyncio.create_subprocess_exec(
        binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stderr is not None
        endpoint = ""
        async with asyncio.timeout(DEADLINE):
            while not endpoint:
                line = (await process.stderr.readline()).decode(errors="replace")
                assert line, "chromium exited before its DevTools endpoint was up"
                if line.startswith("DevTools listening on "):
                    endpoint = line.split()[-1]
        http = endpoint.replace("ws://", "http://").split("/devtools/")[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{http}/json/list") as answer:
                targets = await answer.json()
            page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with session.ws_connect(page_url, max_msg_size=0) as socket:
                page = Page(socket)
                await page.call("Page.enable")
                yield page
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def fetch_script(api: str, token: str | None) -> str:
    """JavaScript that fetches `api` cross-origin and reports what the page could read."""
    headers = json.dumps({"Authorization": f"Bearer {token}"} if token else {})
    return f"""
      fetch({json.dumps(api)}, {{headers: {headers}}})
        .then(async r => ({{read: true, status: r.status, body: await r.json(),
                            requestId: r.headers.get("X-Request-Id")}}))
        .catch(e => ({{read: false, error: String(e)}}))
    """


async def _page_server(aiohttp_server: Any) -> str:
    """A site serving one empty page; its origin."""
    async def page(_request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>app</title><p>app</p>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


async def _api_upstream(aiohttp_server: Any) -> str:
    """The API behind the gateway: answers with the identity it was given."""
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": request.headers.get("X-User-Id"),
                                  "org": request.headers.get("X-Org-Id")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def sites(aiohttp_server: Any, make_gateway: GatewayFactory,
                ) -> tuple[str, str, Running]:
    """An allowed frontend origin, another origin, and the proxy gateway between them."""
    allowed = await _page_server(aiohttp_server)
    other = await _page_server(aiohttp_server)
    gw = await make_gateway({"GATEWAY_UPSTREAM": await _api_upstream(aiohttp_server),
                             "CLERK_AUTHORIZED_PARTIES": allowed})
    return allowed, other, gw


async def test_a_page_on_an_allowed_origin_reads_the_api_and_the_refusals(
    clerk: DevIssuer, sites: tuple[str, str, Running], tmp_path: Path
) -> None:
    allowed, _, gw = sites
    api = f"http://127.0.0.1:{gw.client.server.port}/api/hello"
    token = clerk.token(sub="user_browser", org_id="org_browser", azp=allowed)
    async with chromium(tmp_path) as page:
        await page.open(allowed + "/")
        ok = await page.evaluate(fetch_script(api, token))
        refused = await page.evaluate(fetch_script(api, None))
    assert ok["read"], ok
    assert ok["status"] == 200
    assert ok["body"] == {"hello": "user_browser", "org": "org_browser"}
    assert ok["requestId"]  # exposed to the page
    # The gateway's own refusal is readable too, so the page can tell why.
    assert refused["read"], refused
    assert refused["status"] == 401
    assert refused["body"]["reason"] == "missing_token"
    gw.gateway.metrics.flush()
    assert gw.gateway.registry.get_sample_value(
        "clerk_gateway_cors_preflights_total", {"door": "proxy", "result": "allowed"}) == 1


async def test_a_page_on_another_origin_cannot_read_the_api(
    clerk: DevIssuer, sites: tuple[str, str, Running], tmp_path: Path
) -> None:
    allowed, other, gw = sites
    api = f"http://127.0.0.1:{gw.client.server.port}/api/hello"
    token = clerk.token(sub="user_browser", azp=allowed)
    async with chromium(tmp_path) as page:
        await page.open(other + "/")
        with_token = await page.evaluate(fetch_script(api, token))
        without = await page.evaluate(fetch_script(api, None))
    assert with_token == {"read": False, "error": "TypeError: Failed to fetch"}
    assert without == {"read": False, "error": "TypeError: Failed to fetch"}
    gw.gateway.metrics.flush()
    assert gw.gateway.registry.get_sample_value(
        "clerk_gateway_cors_preflights_total", {"door": "proxy", "result": "refused"}) == 1
