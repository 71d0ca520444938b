"""Shared fixtures: a real fake Clerk (DevIssuer over HTTP) and gateways built in-process."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import Gateway, build_admin_app, build_public_app
from gateway.config import Settings, load_settings
from gateway.devissuer import DevIssuer
from gateway.loops import loop_factory, resolve_loop
from gateway.server import public_runner
from tests.proxy_support import Upstream


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], Any]]:
    """Every async test runs on the loop GATEWAY_EVENT_LOOP names (auto: uvloop if installed).

    Gateways the tests start as processes inherit the variable, so one setting picks the loop
    for the whole run; `make test` runs the suite once per loop.
    """
    choice = os.environ.get("GATEWAY_EVENT_LOOP") or "auto"
    return {resolve_loop(choice): loop_factory(choice)}


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def private_state_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own default state directory (never the user's real one)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("GATEWAY_STATE_DIR", raising=False)


@pytest.fixture
async def clerk(aiohttp_server: Any) -> DevIssuer:
    """A fake Clerk instance served over real HTTP on loopback."""
    issuer = DevIssuer()
    server = await aiohttp_server(issuer.app())
    issuer.issuer = str(server.make_url("")).rstrip("/")
    return issuer


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Upstream:
    """A real upstream on loopback that records every request reaching it."""
    recorder = Upstream()
    server = await aiohttp_server(recorder.app())
    recorder.url = str(server.make_url("")).rstrip("/")
    return recorder


@dataclass
class Running:
    """A gateway under test: its settings, components and HTTP clients."""

    settings: Settings
    gateway: Gateway
    client: TestClient[Any, Any]
    admin: TestClient[Any, Any]

    async def get(self, path: str = "/", token: str | None = None, **kwargs: Any) -> Any:
        """GET through the public listener, with a bearer token when given."""
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.get(path, headers=headers, allow_redirects=False, **kwargs)


GatewayFactory = Callable[..., Awaitable[Running]]


# Proxy suites that run twice: through the proxy's fast door and through the aiohttp door.
BOTH_PROXY_DOORS = frozenset({
    "tests.test_proxy", "tests.test_proxy_headers", "tests.test_proxy_observe",
    "tests.test_proxy_policy", "tests.test_websocket_proxy", "tests.test_security_requests",
    "tests.test_exhaustion_proxy", "tests.test_upstream_desync", "tests.test_cors",
    "tests.test_assertion", "tests.test_proxy_rerouting_headers",
})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Gateways of the proxy suites are built with each proxy door in turn."""
    module = metafunc.module.__name__ if metafunc.module else ""
    if module in BOTH_PROXY_DOORS and "make_gateway" in metafunc.fixturenames:
        metafunc.parametrize("proxy_door", ["fast", "aiohttp"])


@pytest.fixture
def proxy_door() -> str:
    """Which door a proxy-mode gateway serves through (`fast` is the default)."""
    return "fast"


@pytest.fixture
async def make_gateway(
    clerk: DevIssuer, aiohttp_client: Any, tmp_path: Any, proxy_door: str
) -> AsyncIterator[GatewayFactory]:
    """Build and start a gateway trusting the fake Clerk; env and YAML can be adjusted."""
    serial = itertools.count()

    async def factory(
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        *,
        issuer_env: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> Running:
        environ = {"CLERK_ISSUER": clerk.issuer} if issuer_env else {}
        # Each gateway its own state directory: the first the test's default one (as
        # load_settings gives settings built in the test), others their own; a test sharing
        # one passes GATEWAY_STATE_DIR.
        number = next(serial)
        if number:
            environ["GATEWAY_STATE_DIR"] = str(tmp_path / f"state-{number}")
        environ.update(env or {})
        if proxy_door == "aiohttp":  # the same gateway with the proxy's fast door off
            if "GATEWAY_UPSTREAM" not in environ and not (config or {}).get("upstream"):
                pytest.skip("forward-auth gateway: runs once, under the fast proxy door's id")
            section = dict((config or {}).get("proxy") or {})
            config = {**(config or {}), "proxy": {**section, "fast_path": False}}
        path = None
        if config is not None:
            path = tmp_path / f"gateway-{len(list(tmp_path.iterdir()))}.yaml"
            path.write_text(yaml.safe_dump(config))
        settings = load_settings(environ, str(path) if path else None)
        kwargs = {"clock": clock} if clock else {}
        gateway = Gateway(settings, **kwargs)
        client = await aiohttp_client(PublicServer(gateway))
        admin = await aiohttp_client(build_admin_app(gateway))
        return Running(settings, gateway, client, admin)

    yield factory


class PublicServer(TestServer):
    """A TestServer running the public listener as `serve` does: the fast door in front."""

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(build_public_app(gateway), host="127.0.0.1", **kwargs)
        self.gateway = gateway

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        kwargs.pop("handler_cancellation", None)  # the gateway's runner decides
        return public_runner(self.gateway, self.app, **kwargs)


async def serve_app(app: web.Application, port: int | None = None) -> TestServer:
    """Start an aiohttp app on loopback (caller closes it)."""
    server = TestServer(app, host="127.0.0.1", port=port or free_port())
    await server.start_server()
    return server
