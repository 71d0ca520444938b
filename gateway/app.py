"""Wire the gateway together and build its public and admin aiohttp applications."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.auth.extract import TokenExtractor
from gateway.auth.jwks import IssuerKeys
from gateway.auth.verify import Verifier
from gateway.config import Settings, TokenSource
from gateway.http.admin import AdminHandlers
from gateway.http.errors import error_response
from gateway.http.forward_auth import ForwardAuthHandler
from gateway.http.headers import request_id
from gateway.http.proxy import ProxyHandler
from gateway.http.websocket import OpenSockets
from gateway.metrics import Metrics
from gateway.pipeline import Authorizer
from gateway.reasons import Reason
from gateway.routing import Router

__all__ = ["GATEWAY", "WORKER_HEADER", "Gateway", "build_admin_app", "build_public_app"]

RESERVED_PREFIX = "/_gateway/"
WORKER_HEADER = "X-Gateway-Worker"


class Gateway:
    """One gateway process's components, created inside the running event loop."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        scrape_registry: Callable[[], CollectorRegistry] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.clock = clock
        self.scrape_registry = scrape_registry or (lambda: self.registry)
        self.session: aiohttp.ClientSession | None = None
        self.keys: dict[str, IssuerKeys] = {}
        self.verifier = Verifier(settings, self.keys, self.metrics, clock)
        token_sources = settings.token_sources
        ws_query = settings.proxy.websocket_query_token
        if settings.upstream and ws_query and not any(
            s.kind == "query" and s.name == ws_query for s in token_sources
        ):
            # Read only for WebSocket upgrades: the proxy passes a query to the pipeline then.
            token_sources = (*token_sources, TokenSource("query", ws_query))
        self.authorizer = Authorizer(
            Router(settings.routes),
            TokenExtractor(token_sources),
            self.verifier,
            self.metrics,
        )
        self.admin = AdminHandlers(self.keys, lambda: self.scrape_registry())
        self.sockets = OpenSockets()
        self.proxy: ProxyHandler | None = None
        if settings.upstream:
            self.proxy = ProxyHandler(settings, self.authorizer, self.metrics, self.sockets, clock)

    async def start(self) -> None:
        """Open the HTTP client, fetch every issuer's keys once, start the refreshers."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32, ttl_dns_cache=300),
            headers={"User-Agent": "clerk-gateway"},
        )
        for issuer in self.settings.issuers:
            self.keys[issuer.name] = IssuerKeys(
                issuer, self.settings.keys, self.session, self.metrics
            )
        await asyncio.gather(*(keys.refresh() for keys in self.keys.values()))
        for keys in self.keys.values():
            keys.start()
        if self.proxy is not None:
            await self.proxy.start()

    async def close(self) -> None:
        """Stop refreshers and close the HTTP clients."""
        if self.proxy is not None:
            await self.proxy.close()
        for keys in self.keys.values():
            await keys.stop()
        if self.session is not None:
            await self.session.close()


GATEWAY = web.AppKey("gateway", Gateway)


async def _reserved_not_found(request: web.Request) -> web.Response:
    response = error_response(Reason.ACCESS_DENIED, request_id(request.headers), "clerk-gateway")
    response.set_status(404)
    return response


def build_public_app(gateway: Gateway) -> web.Application:
    """The public listener: forward-auth decisions (or the proxy), plus reserved paths."""
    app = web.Application(client_max_size=1024**2)
    app[GATEWAY] = gateway

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        yield
        await gateway.close()

    async def close_sockets(_app: web.Application) -> None:
        gateway.sockets.close_all()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_sockets)
    app.router.add_route("*", RESERVED_PREFIX + "{tail:.*}", _reserved_not_found)

    if gateway.proxy is not None:
        app.router.add_route("*", "/{tail:.*}", gateway.proxy.handle)
    else:
        forward_auth = ForwardAuthHandler(gateway.authorizer, gateway.settings.realm)
        app.router.add_route("*", "/{tail:.*}", forward_auth.handle)
    return app


def build_admin_app(gateway: Gateway) -> web.Application:
    """The admin listener: /healthz, /readyz, /metrics."""
    app = web.Application()
    app[GATEWAY] = gateway
    gateway.admin.register(app)
    worker = str(os.getpid())

    async def tag_worker(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = worker  # which process answered (admin only)

    app.on_response_prepare.append(tag_worker)
    return app
