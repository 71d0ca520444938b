"""Run the gateway's listeners until SIGTERM or SIGINT, then shut down gracefully.

On a stop signal the listeners close at once (no new connections), idle keep-alive
connections are closed, open WebSockets are closed with 1001, and in-flight requests get up
to `shutdown_timeout_seconds` to finish before they are cancelled; then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.app import Gateway, build_admin_app, build_public_app
from gateway.config import Settings

__all__ = ["serve"]

log = logging.getLogger("gateway.server")


async def serve(
    settings: Settings,
    *,
    gateway: Gateway | None = None,
    on_ready: Callable[[Gateway], Awaitable[None]] | None = None,
    shutdown_timeout: float | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve the public and admin listeners until a stop signal arrives."""
    gateway = gateway or Gateway(settings)
    drain = settings.shutdown_timeout_seconds if shutdown_timeout is None else shutdown_timeout
    public = web.AppRunner(
        build_public_app(gateway), access_log=None, shutdown_timeout=drain,
        handle_signals=False,
        # In proxy mode a client that disconnects cancels its upstream request.
        handler_cancellation=settings.mode == "proxy",
    )
    admin = web.AppRunner(build_admin_app(gateway), access_log=None, handle_signals=False,
                          shutdown_timeout=1.0)
    await public.setup()
    await admin.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reuse = reuse_port or None
    try:
        await web.TCPSite(public, settings.listen.host, settings.listen.port,
                          reuse_port=reuse).start()
        await web.TCPSite(admin, settings.admin_listen.host, settings.admin_listen.port,
                          reuse_port=reuse).start()
        log.info("gateway listening", extra={
            "mode": settings.mode, "listen": str(settings.listen),
            "admin_listen": str(settings.admin_listen),
            "issuers": [i.name for i in settings.issuers],
        })
        if on_ready is not None:
            await on_ready(gateway)
        await stop.wait()
        log.info("shutting down", extra={"drain_seconds": drain})
    finally:
        try:
            await public.cleanup()
            await admin.cleanup()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
