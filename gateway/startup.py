"""What the gateway tells its operator at start: one log line per fact, a warning per problem.

A user trusting a new setup needs to see what is running (mode, listeners, upstream, each
issuer with its key source and the key ids obtained, routes, revocation store, workers, event
loop) and which dependency was down at start (an issuer's keys, Redis, the upstream), by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.config import Settings
from gateway.loops import loop_name

if TYPE_CHECKING:  # the CLI imports this module before it needs the gateway's wiring
    from gateway.app import Gateway

__all__ = [
    "ListenError", "check_listeners", "issuer_warnings", "listen_problem", "report_start",
]

log = logging.getLogger("gateway.start")
PROBE_TIMEOUT_SECONDS = 2.0


class ListenError(Exception):
    """A listener cannot be opened (port in use, no permission...): one line for the user."""


def listen_problem(host: str, port: int, role: str, exc: OSError) -> ListenError:
    """The one-line error for a listener that could not open."""
    cause = os.strerror(exc.errno) if exc.errno else str(exc)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ListenError(f"cannot listen on {address} ({role}): {cause.lower()}")


def check_listeners(settings: Settings) -> None:
    """Raise ListenError when a listener's address is taken now (before starting workers)."""
    for listen, role in ((settings.listen, "public listener"),
                         (settings.admin_listen, "admin listener")):
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((listen.host, listen.port))
            except OSError as exc:
                raise listen_problem(listen.host, listen.port, role, exc) from exc


def issuer_warnings(settings: Settings) -> list[str]:
    """Configuration that is valid but almost certainly wrong (shown by check-config too)."""
    return [
        f"issuer {issuer.name}: {issuer.issuer!r} ends with '/': a token's iss never does, so "
        "every token would be refused as wrong_issuer (remove the trailing slash)"
        for issuer in settings.issuers if issuer.issuer.endswith("/")
    ]


async def _reachable(url: str) -> str | None:
    """None when a TCP connection to the URL's host and port opens, else why not."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            _, writer = await asyncio.open_connection(parts.hostname, port)
    except (OSError, TimeoutError) as exc:
        return exc.strerror or type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def report_start(gateway: Gateway, workers: int) -> None:
    """Log the running setup, one line per fact; a dependency down is a warning naming it."""
    settings = gateway.settings
    log.info("mode: %s", settings.mode, extra={"mode": settings.mode})
    log.info("listening on %s (public) and %s (admin)", settings.listen, settings.admin_listen,
             extra={"listen": str(settings.listen),
                    "admin_listen": str(settings.admin_listen)})
    if settings.upstream:
        problem = await _reachable(settings.upstream)
        if problem is None:
            log.info("upstream: %s", settings.upstream, extra={"upstream": settings.upstream})
        else:
            log.warning("upstream %s unreachable at start (%s): requests get 502 "
                        "upstream_unavailable until it answers", settings.upstream, problem,
                        extra={"upstream": settings.upstream})
    for issuer in settings.issuers:
        keys = gateway.keys.get(issuer.name)
        source = keys.source if keys is not None else issuer.key_source
        fields = {"issuer": issuer.name, "iss": issuer.issuer, "key_source": source}
        if keys is not None and keys.ready:
            kids = ", ".join(keys.key_ids) or "(pinned key)"
            log.info("issuer %s: %s, keys from %s: %s", issuer.name, issuer.issuer, source,
                     kids, extra={**fields, "key_ids": list(keys.key_ids)})
        else:
            log.warning("issuer %s: %s, no key obtained from %s at start: its tokens get 503 "
                        "keys_unavailable until a fetch succeeds", issuer.name, issuer.issuer,
                        source, extra=fields)
    for warning in issuer_warnings(settings):
        log.warning(warning)
    default = settings.route_options.default.rule.access
    log.info("routes: %d (unmatched requests: %s)", len(settings.routes), default,
             extra={"routes": len(settings.routes)})
    if settings.redis_url is None:
        log.info("revocation store: in-process memory (not shared between workers or hosts)",
                 extra={"store": "memory"})
    elif gateway.revocation.ready:
        log.info("revocation store: redis (reachable)", extra={"store": "redis"})
    else:
        log.warning("revocation store: redis unreachable at start: revocation checks follow "
                    "revocation.on_store_error (%s)", settings.revocation.on_store_error,
                    extra={"store": "redis"})
    log.info("workers: %d", workers, extra={"workers": workers})
    loop = asyncio.get_running_loop()
    kind = loop_name(loop)
    log.info("event loop: %s (%s; event_loop: %s)", kind, type(loop).__name__,
             settings.event_loop, extra={"event_loop": kind})
