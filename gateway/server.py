"""Run the gateway's listeners until SIGTERM or SIGINT, then shut down gracefully.

On a stop signal the listeners close at once (no new connections), idle keep-alive
connections are closed, open WebSockets are closed with 1001, and in-flight requests get up
to `shutdown_timeout_seconds` to finish before they are cancelled; then the process exits 0.
A stop that overruns that by more than a few seconds is reported and ends the process with a
non-zero code (gateway/watchdog.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.app import Gateway, build_admin_app, build_public_app
from gateway.config import Settings
from gateway.http.fast_door import FastDoor
from gateway.http.fast_proxy import FastProxyDoor
from gateway.http.guard import ConnectionFront, GuardedAppRunner
from gateway.loops import loop_name
from gateway.reload import reload_from_sources
from gateway.startup import listen_problem, report_start
from gateway.watchdog import SHUTDOWN_GRACE_SECONDS, arm_shutdown_watchdog

__all__ = ["KEEPALIVE_SECONDS", "admin_runner", "public_runner", "serve"]

log = logging.getLogger("gateway.server")
KEEPALIVE_SECONDS = 75.0  # default of limits.keepalive_timeout_seconds (aiohttp's run_app)


async def _reload(gateway: Gateway, path: str | None) -> None:
    """SIGHUP: re-read the environment and the file; keep the running config if invalid."""
    log.info("SIGHUP received: reloading the configuration", extra={"config": path})
    try:
        await reload_from_sources(gateway, os.environ, path)
    except Exception:  # a reload bug must not take the serving process down
        log.exception("configuration reload failed; the running configuration stays in force")


def public_runner(gateway: Gateway, app: web.Application | None = None,
                  **kwargs: Any) -> GuardedAppRunner:
    """The public listener's runner: guarded connections, behind the mode's fast door when on."""
    settings = gateway.settings
    limits = settings.limits
    front: ConnectionFront | None = None
    if gateway.forward_auth is not None and settings.forward_auth.fast_path:
        front = FastDoor(
            gateway.forward_auth, gateway.metrics, max_head_bytes=limits.max_header_bytes,
            max_headers=limits.max_headers, head_timeout=limits.header_timeout_seconds,
            keepalive_timeout=limits.keepalive_timeout_seconds)
    proxy = gateway.proxy
    if proxy is not None and settings.proxy.fast_path and proxy.lean_only():
        front = FastProxyDoor(
            proxy, gateway.authorizer, gateway.metrics, realm=settings.realm,
            max_body_bytes=settings.proxy.max_body_bytes, max_head_bytes=limits.max_header_bytes,
            max_headers=limits.max_headers, head_timeout=limits.header_timeout_seconds,
            keepalive_timeout=limits.keepalive_timeout_seconds)
    return GuardedAppRunner(
        app or build_public_app(gateway), head_timeout=limits.header_timeout_seconds,
        realm=settings.realm, front=front, access_log=None, handle_signals=False,
        keepalive_timeout=limits.keepalive_timeout_seconds,
        max_line_size=limits.max_header_bytes, max_field_size=limits.max_header_bytes,
        max_headers=limits.max_headers,
        # In proxy mode a client that disconnects cancels its upstream request.
        handler_cancellation=settings.mode == "proxy",
        **kwargs,
    )


def admin_runner(gateway: Gateway, app: web.Application | None = None,
                 **kwargs: Any) -> GuardedAppRunner:
    """The admin listener's runner, guarded like the public one (head deadline, idle close,
    header caps): it is reachable from the network in containers."""
    settings = gateway.settings
    limits = settings.limits
    return GuardedAppRunner(
        app or build_admin_app(gateway), head_timeout=limits.header_timeout_seconds,
        realm=settings.realm, access_log=None, handle_signals=False,
        keepalive_timeout=limits.keepalive_timeout_seconds,
        max_line_size=limits.max_header_bytes, max_field_size=limits.max_header_bytes,
        max_headers=limits.max_headers, **kwargs)


async def serve(
    settings: Settings,
    *,
    gateway: Gateway | None = None,
    on_ready: Callable[[Gateway], Awaitable[None]] | None = None,
    shutdown_timeout: float | None = None,
    reuse_port: bool = False,
    reload_missed: Callable[[], bool] | None = None,
    report_workers: int | None = None,
) -> None:
    """Serve the public and admin listeners until a stop signal arrives; with
    `report_workers`, log the start-up facts (gateway/startup.py) once listening."""
    gateway = gateway or Gateway(settings)
    drain = settings.shutdown_timeout_seconds if shutdown_timeout is None else shutdown_timeout
    public = public_runner(gateway, shutdown_timeout=drain)
    admin = admin_runner(gateway, shutdown_timeout=1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()
    started = False
    pending_reload = False

    def on_sighup() -> None:
        nonlocal pending_reload
        if not started:  # a reload asked for while starting runs once the gateway is up
            pending_reload = True
            return
        task = loop.create_task(_reload(gateway, settings.source_path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await public.setup()
    await admin.setup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = True
    if pending_reload or (reload_missed is not None and reload_missed()):
        on_sighup()
    reuse = reuse_port or None
    try:
        for runner, listen, role in ((public, settings.listen, "public listener"),
                                     (admin, settings.admin_listen, "admin listener")):
            try:
                await web.TCPSite(runner, listen.host, listen.port, reuse_port=reuse).start()
            except OSError as exc:
                raise listen_problem(listen.host, listen.port, role, exc) from exc
        log.info("gateway listening", extra={
            "mode": settings.mode, "listen": str(settings.listen),
            "admin_listen": str(settings.admin_listen),
            "issuers": [i.name for i in settings.issuers], "event_loop": loop_name(loop),
        })
        if report_workers is not None:
            await report_start(gateway, report_workers)
        if on_ready is not None:
            await on_ready(gateway)
        await stop.wait()
        log.info("shutting down", extra={"drain_seconds": drain})
        # Public drain, admin drain (1 s), then the stores and clients: never longer.
        arm_shutdown_watchdog(loop, drain + 1.0 + SHUTDOWN_GRACE_SECONDS)
    finally:
        try:
            await public.cleanup()
            await admin.cleanup()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
