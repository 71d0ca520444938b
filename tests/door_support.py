"""Raw-socket helpers: one gateway per door (fast door, aiohttp door, proxy), raw exchanges."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running
from tests.proxy_support import Upstream

__all__ = ["DOORS", "Doors", "exchange", "head", "port_of", "three_doors"]

DOORS = ("fast_door", "aiohttp_door", "proxy", "proxy_aiohttp")


@dataclass
class Doors:
    """The same routes behind each door, the gateways, and two valid tokens."""

    ports: dict[str, int]
    gateways: dict[str, Running]
    upstream: Upstream
    token: str
    other: str


def port_of(running: Running, admin: bool = False) -> int:
    """The public (or admin) listener's port."""
    port = (running.admin if admin else running.client).server.port
    assert port is not None
    return port


async def three_doors(clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream,
                      config: dict[str, Any], env: dict[str, str] | None = None) -> Doors:
    """A forward-auth gateway with and without the fast door, and a proxy with and without
    its fast door; same config."""
    env = env or {}
    gateways = {
        "fast_door": await make_gateway(env=env, config=config),
        "aiohttp_door": await make_gateway(
            env=env, config={**config, "forward_auth": {"fast_path": False}}),
        "proxy": await make_gateway(env={**env, "GATEWAY_UPSTREAM": upstream.url},
                                    config=config),
        "proxy_aiohttp": await make_gateway(
            env={**env, "GATEWAY_UPSTREAM": upstream.url},
            config={**config, "proxy": {**config.get("proxy", {}), "fast_path": False}}),
    }
    return Doors({door: port_of(running) for door, running in gateways.items()}, gateways,
                 upstream, clerk.token(sub="user_1"), clerk.token(sub="user_2"))


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw bytes on a new connection; the status and JSON body ({} when none).

    The status is 0 when the server closed without an answer.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        answer = b""
    finally:
        writer.close()
    if not answer.startswith(b"HTTP/1."):
        return 0, {}
    status = int(answer.split(b" ", 2)[1])
    try:
        document = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    except ValueError:
        document = {}
    return status, document if isinstance(document, dict) else {}


def head(lines: list[bytes], path: bytes = b"/app", method: bytes = b"GET",
         body: bytes = b"") -> bytes:
    """A request with these header lines (and a body), closing the connection after it."""
    extra = [b"Content-Length: %d" % len(body)] if body else []
    return b"\r\n".join([method + b" " + path + b" HTTP/1.1", b"Host: gateway.test",
                         b"Connection: close", *lines, *extra]) + b"\r\n\r\n" + body
