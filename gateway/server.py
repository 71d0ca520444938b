"""Run the gateway's listeners until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.app import Gateway, build_admin_app, build_public_app
from gateway.config import Settings
from gateway.reload import reload_from_sources

__all__ = ["serve"]

log = logging.getLogger("gateway.server")


async def _reload(gateway: Gateway, path: str | None) -> None:
    """SIGHUP: re-read the environment and the file; keep the running config if invalid."""
    log.info("SIGHUP received: reloading the configuration", extra={"config": path})
    try:
        await reload_from_sources(gateway, os.environ, path)
    except Exception:  # a reload bug must not take the serving process down
        log.exception("configuration reload failed; the running configuration stays in force")


async def serve(
    settings: Settings,
    *,
    gateway: Gateway | None = None,
    on_ready: Callable[[Gateway], Awaitable[None]] | None = None,
    shutdown_timeout: float = 30.0,
) -> None:
    """Serve the public and admin listeners until a stop signal arrives."""
    gateway = gateway or Gateway(settings)
    public = web.AppRunner(
        build_public_app(gateway), access_log=None, shutdown_timeout=shutdown_timeout,
        handle_signals=False,
    )
    admin = web.AppRunner(build_admin_app(gateway), access_log=None, handle_signals=False)
    await public.setup()
    await admin.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = loop.create_task(_reload(gateway, settings.source_path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await web.TCPSite(public, settings.listen.host, settings.listen.port).start()
        await web.TCPSite(admin, settings.admin_listen.host, settings.admin_listen.port).start()
        log.info("gateway listening", extra={
            "mode": settings.mode, "listen": str(settings.listen),
            "admin_listen": str(settings.admin_listen),
            "issuers": [i.name for i in settings.issuers],
        })
        if on_ready is not None:
            await on_ready(gateway)
        await stop.wait()
        log.info("shutting down")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await admin.cleanup()
        await public.cleanup()
