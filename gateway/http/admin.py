"""Admin listener endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.auth.jwks import IssuerKeys

__all__ = ["AdminHandlers"]


class AdminHandlers:
    """Health, readiness and metrics handlers over the gateway's state."""

    def __init__(
        self,
        keys: Mapping[str, IssuerKeys],
        registry_for_scrape: Callable[[], CollectorRegistry],
        extra_checks: Mapping[str, Callable[[], bool]] | None = None,
    ) -> None:
        self._keys = keys
        self._registry_for_scrape = registry_for_scrape
        self._extra_checks = dict(extra_checks or {})

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        """Add a readiness check (e.g. Redis reachable)."""
        self._extra_checks[name] = check

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive: the process answers; does not depend on the identity provider."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready when every issuer has keys and every extra check passes."""
        checks = {f"keys:{name}": keys.ready for name, keys in self._keys.items()}
        checks.update({name: check() for name, check in self._extra_checks.items()})
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition."""
        body = generate_latest(self._registry_for_scrape())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def register(self, app: web.Application) -> None:
        """Add the routes to an application."""
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
