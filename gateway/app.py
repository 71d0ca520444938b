"""Wire the gateway together and build its public and admin aiohttp applications."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.auth.assertion import build_signer
from gateway.auth.introspection import SessionIntrospector
from gateway.auth.jwks import IssuerKeys
from gateway.auth.machine import MachineVerifier
from gateway.auth.machine_api import MachineApi
from gateway.auth.revocation import RevocationChecker, SocketCloser, clerk_issuers
from gateway.auth.verdicts import LocalVerdicts
from gateway.auth.verify import Verifier
from gateway.config import Settings
from gateway.config_issuers import IssuerSettings, KeySettings
from gateway.cors import CorsPolicy
from gateway.http.admin import AdminHandlers
from gateway.http.admin_api import AdminApi
from gateway.http.bounded_body import BoundedBodies
from gateway.http.cors import CorsResponses
from gateway.http.errors import error_response, json_errors
from gateway.http.forward_auth import ForwardAuthHandler
from gateway.http.hasura import HASURA_PATH, HasuraWebhook
from gateway.http.headers import request_id
from gateway.http.jwks_endpoint import JWKS_PATH, JwksEndpoint
from gateway.http.proxy import ProxyHandler
from gateway.http.webhooks import WEBHOOK_PATH, ClerkWebhooks
from gateway.http.websocket import OpenSockets
from gateway.http.workos_webhooks import WORKOS_WEBHOOK_PATH, WorkOSWebhooks
from gateway.logs import flush_logs
from gateway.metrics import Metrics
from gateway.pipeline import Authorizer, extractor_for, router_for
from gateway.reasons import Reason
from gateway.reload import ReloadResult, apply_settings
from gateway.state.sqlite import SqliteStore
from gateway.state.wiring import (
    introspection_share_for,
    keyset_share_for,
    lookup_budgets_for,
    machine_verdicts_for,
    revocation_store_for,
    shared_store_for,
)
from gateway.tasks import stop_task

__all__ = ["GATEWAY", "WORKER_HEADER", "Gateway", "build_admin_app", "build_public_app"]

RESERVED_PREFIX = "/_gateway/"
METRICS_FLUSH_SECONDS = 0.25
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
        self.state = shared_store_for(settings, clock)
        self.machine = _machine_verifier(settings, lambda: self.session, self.metrics, clock,
                                         self.state)
        self.verifier = Verifier(settings, self.keys, self.metrics, clock, self.machine)
        revocation = settings.revocation
        introspector = None
        if revocation.introspection and settings.clerk_secret_key is not None:
            introspector = SessionIntrospector(
                revocation, settings.clerk_api_url, settings.clerk_secret_key,
                lambda: self.session, self.metrics, clock,
                share=introspection_share_for(self.state, settings, clock))
        redis_url = settings.redis_url.value if settings.redis_url else None
        self.revocation = RevocationChecker(
            revocation, revocation_store_for(settings, self.state, clock), self.metrics, clock,
            introspector, clerk_issuers(settings))
        self.authorizer = Authorizer(
            router_for(settings),
            extractor_for(settings),
            self.verifier,
            self.metrics,
            revocation=self.revocation,
            assertions=build_signer(settings, clock),
            cors=CorsPolicy(settings.cors),
        )
        self.jwks = JwksEndpoint(lambda: self.authorizer.assertions,
                                 lambda: self.settings.state_dir, clock)
        # Bodies read before anything is authenticated (webhooks, Hasura): one shared bound.
        self.bodies = BoundedBodies(settings.limits, self.metrics)
        self.webhooks = ClerkWebhooks(
            settings.webhook_secret, self.revocation, revocation, self.metrics, clock,
            bodies=self.bodies)
        self.workos_webhooks = WorkOSWebhooks(
            settings.workos_webhook_secret, self.revocation, revocation, self.metrics, clock,
            bodies=self.bodies)
        self.hasura = HasuraWebhook(self.authorizer, settings.hasura, settings.realm, clock,
                                    self.bodies)
        self.admin_api = AdminApi(settings.admin_token, self.revocation)
        self.admin = AdminHandlers(self.keys, self._registry_to_scrape)
        self._flusher: asyncio.Task[None] | None = None
        if redis_url:
            self.admin.add_check("redis", lambda: self.revocation.ready)
        if self.state is not None:
            state = self.state
            self.admin.add_check("state", lambda: state.healthy)
        self._reload_lock = asyncio.Lock()
        self.sockets = OpenSockets()
        self.revocation.subscribe(SocketCloser(self.sockets))
        self.proxy: ProxyHandler | None = None
        self.forward_auth: ForwardAuthHandler | None = None
        if settings.upstream:
            self.proxy = ProxyHandler(settings, self.authorizer, self.metrics, self.sockets, clock)
        else:
            self.forward_auth = ForwardAuthHandler(
                self.authorizer, settings.realm, settings.forward_auth)

    async def reload(self, settings: Settings) -> ReloadResult:
        """Swap routes, issuers, token sources and identity headers for validated settings."""
        async with self._reload_lock:
            return await apply_settings(self, settings)

    def _registry_to_scrape(self) -> CollectorRegistry:
        """The registry a scrape reads, after adding this process's batched counts."""
        self.metrics.flush()
        return self.scrape_registry()

    async def _flush_metrics(self) -> None:
        """Every quarter second: add batched counts (for scrapes by other workers) and write
        batched access lines."""
        while True:
            await asyncio.sleep(METRICS_FLUSH_SECONDS)
            self.metrics.flush()
            flush_logs()

    async def start(self) -> None:
        """Open the HTTP client, fetch every issuer's keys once, start the refreshers."""
        if self.state is not None:
            await self.state.open()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_metrics())
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32, ttl_dns_cache=300),
            headers={"User-Agent": "clerk-gateway"},
        )
        for issuer in self.settings.issuers:
            self.keys[issuer.name] = self.issuer_keys(issuer, self.settings.keys)
        await asyncio.gather(*(keys.refresh() for keys in self.keys.values()))
        for keys in self.keys.values():
            keys.start()
        await self.revocation.start()
        if self.proxy is not None:
            await self.proxy.start()

    def issuer_keys(self, issuer: IssuerSettings, settings: KeySettings) -> IssuerKeys:
        """An issuer's key set, shared with every worker when the shared store is on."""
        assert self.session is not None
        return IssuerKeys(issuer, settings, self.session, self.metrics,
                          share=keyset_share_for(self.state, issuer))

    async def close(self) -> None:
        """Stop the proxy, refreshers, the revocation store and the HTTP client."""
        await stop_task(self._flusher)
        self._flusher = None
        self.metrics.flush()
        flush_logs()
        if self.proxy is not None:
            await self.proxy.close()
        for keys in self.keys.values():
            await keys.stop()
        await self.revocation.close()
        if self.state is not None:
            await self.state.close()
        if self.session is not None:
            await self.session.close()


GATEWAY = web.AppKey("gateway", Gateway)


def _machine_verifier(
    settings: Settings,
    session: Callable[[], aiohttp.ClientSession | None],
    metrics: Metrics,
    clock: Callable[[], float],
    state: SqliteStore | None = None,
) -> MachineVerifier:
    """The verifier of opaque machine credentials (its verdicts and look-up budgets shared by
    every worker through the host's store when shared_state is on, else kept in this
    process)."""
    machine = settings.machine_tokens
    api = MachineApi(settings.clerk_api_url, settings.clerk_secret_key,
                     machine.machine_secret_key, session, machine.timeout_seconds, clock)
    issuer = next((i.issuer for i in settings.issuers if i.preset == "clerk"),
                  settings.clerk_api_url)
    share = machine_verdicts_for(state, settings, clock)
    return MachineVerifier(machine, api, share or LocalVerdicts(machine.cache_size), metrics,
                           issuer, clock, settings.leeway_seconds, share,
                           lookup_budgets_for(state, settings, clock))


async def _reserved_not_found(request: web.Request) -> web.Response:
    """Paths under /_gateway/ are the gateway's own, never decisions or proxied requests."""
    return error_response(Reason.NOT_FOUND, request_id(request.headers), realm="")


def build_public_app(gateway: Gateway) -> web.Application:
    """The public listener: forward-auth decisions (or the proxy), plus reserved paths."""
    app = web.Application(client_max_size=1024**2, middlewares=[json_errors])
    app[GATEWAY] = gateway

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        yield
        await gateway.close()

    async def close_sockets(_app: web.Application) -> None:
        gateway.sockets.close_all()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_sockets)
    app.router.add_route("*", WEBHOOK_PATH, gateway.webhooks.handle)
    app.router.add_route("*", WORKOS_WEBHOOK_PATH, gateway.workos_webhooks.handle)
    app.router.add_route("*", HASURA_PATH, gateway.hasura.handle)
    app.router.add_route("*", JWKS_PATH, gateway.jwks.handle)
    app.router.add_route("*", RESERVED_PREFIX + r"{tail:[\s\S]*}", _reserved_not_found)

    door = gateway.proxy or gateway.forward_auth
    assert door is not None  # one of the two, by construction
    if gateway.proxy is not None:
        app.on_response_prepare.append(CorsResponses(gateway.authorizer).on_response_prepare)
    app.router.add_route("*", r"/{tail:[\s\S]*}", door.handle)
    return app


def build_admin_app(gateway: Gateway) -> web.Application:
    """The admin listener: /healthz, /readyz, /metrics, the admin API, the webhooks and the
    Hasura auth webhook."""
    app = web.Application(middlewares=[json_errors])
    app[GATEWAY] = gateway
    gateway.admin.register(app)
    gateway.admin_api.register(app)
    app.router.add_route("*", WEBHOOK_PATH, gateway.webhooks.handle)
    app.router.add_route("*", WORKOS_WEBHOOK_PATH, gateway.workos_webhooks.handle)
    app.router.add_route("*", HASURA_PATH, gateway.hasura.handle)
    app.router.add_route("*", JWKS_PATH, gateway.jwks.handle)
    worker = str(os.getpid())

    async def tag_worker(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = worker  # which process answered (admin only)

    app.on_response_prepare.append(tag_worker)
    return app
