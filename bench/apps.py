"""The aiohttp contenders, each run as its own process: `python -m bench.apps KIND --port N`.

- bare: answers 200 to every path (the floor of any aiohttp service on this machine);
- naive: what teams write: `jwt.decode` of the Bearer token on every request;
- proxy: a plain streaming aiohttp reverse proxy (ClientSession), no authentication;
- issuer: gateway.devissuer.DevIssuer plus /_bench/hits (JWKS fetch counts, for the storm);
- relay_floor: not aiohttp and not a proxy: a byte relay with llhttp parsing and no HTTP
  semantics, what the loop, the sockets and the parser cost (the floor under any Python proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import aiohttp
import httptools
import jwt
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.loops import loop_factory, run

__all__ = ["FloorClient", "bare_app", "issuer_app", "naive_app", "proxy_app", "serve_floor"]

CATCH_ALL = "/{tail:.*}"

# Hop-by-hop headers (RFC 9110 7.6.1) a proxy must not forward.
_HOP = frozenset(h.lower() for h in (
    hdrs.CONNECTION, hdrs.KEEP_ALIVE, hdrs.PROXY_AUTHENTICATE, hdrs.PROXY_AUTHORIZATION,
    hdrs.TE, hdrs.TRAILER, hdrs.TRANSFER_ENCODING, hdrs.UPGRADE, hdrs.HOST,
    hdrs.CONTENT_LENGTH,
))


def bare_app() -> web.Application:
    """200 with an empty body on every path."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_route("*", CATCH_ALL, handle)
    return app


def naive_app(pem: str, issuer: str) -> web.Application:
    """The decision service teams write: PyJWT decode on every request, key loaded once."""
    key = load_pem_public_key(pem.encode())

    async def handle(request: web.Request) -> web.Response:
        auth = request.headers.get(hdrs.AUTHORIZATION, "")
        if not auth.startswith("Bearer "):
            return web.Response(status=401)
        try:
            claims = jwt.decode(auth[7:], key, algorithms=["RS256"], issuer=issuer,  # type: ignore[arg-type]
                                leeway=5)
        except jwt.PyJWTError:
            return web.Response(status=401)
        return web.Response(headers={"X-User-Id": str(claims.get("sub", ""))})

    app = web.Application()
    app.router.add_route("*", CATCH_ALL, handle)
    return app


def proxy_app(upstream: str) -> web.Application:
    """A plain streaming reverse proxy: request and response bodies are never buffered whole."""
    base = upstream.rstrip("/")
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        app[session_key] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            skip_auto_headers=(hdrs.USER_AGENT,),
        )
        yield
        await app[session_key].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = request.content if request.body_exists else None
        async with request.app[session_key].request(
            request.method, base + request.raw_path, headers=headers, data=body,
            allow_redirects=False,
        ) as upstream_response:
            response = web.StreamResponse(status=upstream_response.status)
            for name, value in upstream_response.headers.items():
                if name.lower() not in _HOP:
                    response.headers.add(name, value)
            if upstream_response.content_length is not None:
                response.content_length = upstream_response.content_length
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_route("*", CATCH_ALL, handle)
    return app


def issuer_app(issuer_url: str) -> web.Application:
    """A DevIssuer (fake Clerk) that also reports its hit counts at /_bench/hits."""
    from gateway.devissuer import DevIssuer

    issuer = DevIssuer(issuer_url)
    fetched_at: list[float] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/.well-known/jwks.json":
            fetched_at.append(time.time())
        return await handler(request)

    app = issuer.app()
    app.middlewares.append(record)

    async def hits(request: web.Request) -> web.Response:
        return web.json_response({**issuer.hits, "jwks_times": fetched_at})

    app.router.add_get("/_bench/hits", hits)
    return app


class _FloorUpstream(asyncio.Protocol):
    """The upstream end of one relayed connection: its bytes go back to the client as they come."""

    def __init__(self, client: FloorClient) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        """Straight back to the client."""
        self.client.transport.write(data)

    def pause_writing(self) -> None:
        """The upstream is not reading: stop reading the client."""
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        """The upstream reads again."""
        self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """The upstream went away: so does the client."""
        self.client.transport.close()


class FloorClient(asyncio.Protocol):
    """One client connection relayed byte for byte to its own upstream connection, every
    byte fed to llhttp on the way (no header is read, nothing is decided or rewritten)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.parser = httptools.HttpRequestParser(self)
        self.messages = 0  # requests llhttp saw whole
        self.waiting: list[bytes] = []  # client bytes that came before the upstream was up
        self.upstream: asyncio.Transport | None = None
        self.closed = False

    def on_message_complete(self) -> None:
        """llhttp's only callback here: count a whole request."""
        self.messages += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Open this connection's upstream connection."""
        # uvloop's transports have asyncio.Transport's methods without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: _FloorUpstream(self), self.host, self.port)
        except OSError:
            self.transport.close()
            return
        if self.closed:
            transport.close()
            return
        self.upstream = transport
        if self.waiting:
            self.upstream.write(b"".join(self.waiting))
            self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        """Parse, then relay (a request llhttp refuses or an upgrade closes the connection)."""
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.transport.close()
            return
        if self.upstream is not None:
            self.upstream.write(data)
        else:
            self.waiting.append(data)

    def pause_writing(self) -> None:
        """The client is not reading: stop reading the upstream."""
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        """The client reads again."""
        if self.upstream is not None:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """The client went away: so does its upstream connection."""
        self.closed = True
        if self.upstream is not None:
            self.upstream.close()


async def serve_floor(port: int, upstream: str) -> None:
    """Relay every connection to 127.0.0.1:port to `upstream` (http://host:port) until killed."""
    target = urlsplit(upstream)
    host, upstream_port = target.hostname or "127.0.0.1", target.port or 80
    server = await asyncio.get_running_loop().create_server(
        lambda: FloorClient(host, upstream_port), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Run one contender until killed."""
    parser = argparse.ArgumentParser(prog="python -m bench.apps")
    parser.add_argument("kind", choices=("bare", "naive", "proxy", "issuer", "relay_floor"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pem-file", help="naive: the PEM public key")
    parser.add_argument("--issuer", default="", help="naive: expected iss; issuer: own URL")
    parser.add_argument("--upstream", help="proxy, relay_floor: upstream base URL")
    parser.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"),
                        help="event loop (auto: uvloop where installed)")
    args = parser.parse_args(argv)
    if args.kind == "relay_floor":
        print(json.dumps({"kind": args.kind, "port": args.port}), file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            run(serve_floor(args.port, args.upstream), args.loop)
        return 0
    if args.kind == "bare":
        app = bare_app()
    elif args.kind == "naive":
        app = naive_app(Path(args.pem_file).read_text(), args.issuer)
    elif args.kind == "proxy":
        app = proxy_app(args.upstream)
    else:
        app = issuer_app(args.issuer)
    print(json.dumps({"kind": args.kind, "port": args.port}), file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None,
                    loop=loop_factory(args.loop)())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
