"""Real nginx and Caddy in front of a recording upstream, with the gateway as their forward-auth.

Everything listens on free loopback ports and writes only under the test's tmp_path. The
configurations generated here are the ones the README shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.devissuer import DevIssuer
from gateway.pipeline import Decision
from tests.conftest import PublicServer, free_port, serve_app

__all__ = [
    "IDENTITY_HEADERS",
    "GatewayUnderTest",
    "PeerProcess",
    "Upstream",
    "caddyfile",
    "fast_door_answers",
    "fetch",
    "nginx_conf",
    "peer_gateway",
    "peer_upstream",
    "require_binary",
    "run_caddy",
    "run_gateway",
    "run_nginx",
    "run_upstream",
]

NGINX = "/usr/sbin/nginx"
CADDY = "/usr/bin/caddy"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

# The gateway's default identity headers: the ones each peer copies onto the upstream request.
IDENTITY_HEADERS = (
    "X-User-Id", "X-Org-Id", "X-Role", "X-Org-Slug", "X-Org-Permissions",
    "X-Session-Id", "X-Plan", "X-Features", "X-Actor-Id",
)


def require_binary(path: str, apt_package: str) -> str:
    """The binary's path; fails under CI when it is missing, else skips with an install hint."""
    found = path if os.access(path, os.X_OK) else shutil.which(Path(path).name)
    if found:
        return found
    message = f"{path} not found: install it with `apt-get install -y {apt_package}`"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# ----------------------------------------------------------------------------- upstream


@dataclass
class Upstream:
    """A test upstream that records every request's method, path and headers."""

    server: TestServer | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The loopback port it listens on."""
        assert self.server is not None and self.server.port is not None
        return self.server.port

    async def _echo(self, request: web.Request) -> web.Response:
        seen = {
            "method": request.method,
            "path": request.path_qs,
            "headers": {k: v for k, v in request.headers.items()},
            "header_list": [[k, v] for k, v in request.headers.items()],
        }
        self.requests.append(seen)
        return web.json_response(seen)

    def app(self) -> web.Application:
        """The upstream's application: every path echoes what it received."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app


@contextlib.asynccontextmanager
async def run_upstream() -> AsyncIterator[Upstream]:
    """Serve a recording upstream on loopback."""
    upstream = Upstream()
    upstream.server = await serve_app(upstream.app())
    try:
        yield upstream
    finally:
        await upstream.server.close()


# ----------------------------------------------------------------------------- gateway


@dataclass
class GatewayUnderTest:
    """The gateway served on a real loopback port, with what each decision saw."""

    gateway: Gateway
    server: TestServer
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The loopback port of its public listener."""
        assert self.server.port is not None
        return self.server.port


@contextlib.asynccontextmanager
async def run_gateway(env: Mapping[str, str], *, fast_path: bool = True,
                      ) -> AsyncIterator[GatewayUnderTest]:
    """Serve the public listener as `serve` does (fast door in front unless `fast_path` is
    False) and record each request the forward-auth handler sees, whichever door it took."""
    settings = load_settings(dict(env), None)
    if not fast_path:
        settings = dataclasses.replace(settings, forward_auth=dataclasses.replace(
            settings.forward_auth, fast_path=False))
    gateway = Gateway(settings)
    handler = gateway.forward_auth
    assert handler is not None
    seen: list[dict[str, Any]] = []
    facts, observe = handler.facts, handler.observer.observe

    def record_facts(method: str, own_path: str, remote: str | None,
                     headers: CIMultiDictProxy[str]) -> Any:
        seen.append({"path": own_path, "headers": CIMultiDict(headers)})
        return facts(method, own_path, remote, headers)

    def record_answer(started: float, rid: str, method: str, status: int,
                      decision: Decision | None, *args: Any) -> None:
        seen[-1].update(status=status, decision_path=decision.path if decision else None,
                        reason=decision.reason.label if decision else None)
        observe(started, rid, method, status, decision, *args)

    handler.facts = record_facts  # type: ignore[method-assign]
    handler.observer.observe = record_answer  # type: ignore[method-assign]
    server = PublicServer(gateway, port=free_port())
    await server.start_server()
    try:
        yield GatewayUnderTest(gateway, server, seen)
    finally:
        await server.close()


def fast_door_answers(running: GatewayUnderTest) -> int:
    """How many requests the fast door answered itself (at once or after I/O)."""
    running.gateway.metrics.flush()
    registry = running.gateway.registry
    return int(sum(
        registry.get_sample_value("clerk_gateway_forward_auth_fast_path_total",
                                  {"result": result}) or 0
        for result in ("answered", "answered_after_io")))


@pytest.fixture(name="upstream")
async def peer_upstream() -> AsyncIterator[Upstream]:
    """The upstream behind the peer (a fixture named `upstream` where it is imported)."""
    async with run_upstream() as running:
        yield running


@pytest.fixture(name="gw", params=["fast_door", "aiohttp_door"])
async def peer_gateway(clerk: DevIssuer, request: pytest.FixtureRequest,
                       ) -> AsyncIterator[GatewayUnderTest]:
    """The gateway behind the peer, once with the fast door in front and once without
    (a fixture named `gw` where it is imported)."""
    fast_path = request.param == "fast_door"
    async with run_gateway({"CLERK_ISSUER": clerk.issuer}, fast_path=fast_path) as running:
        yield running
        assert fast_door_answers(running) == (len(running.seen) if fast_path else 0)


# ----------------------------------------------------------------------------- processes


@dataclass
class PeerProcess:
    """A peer (nginx or Caddy) running as a subprocess, listening on a loopback port."""

    name: str
    process: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def base(self) -> str:
        """The peer's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """What the peer wrote to stdout/stderr so far (for assertion messages)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_listening(self) -> None:
        """Return once the port accepts connections; fail with the peer's output otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            if self.process.returncode is not None:
                break
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        await self.stop()
        pytest.fail(f"{self.name} did not start listening on {self.port}:\n{self.output()}",
                    pytrace=False)

    async def stop(self) -> None:
        """Ask the peer to quit (SIGTERM / SIGQUIT), kill it if it lingers, reap it."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()


async def fetch(peer: PeerProcess, path: str = "/", token: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
    """GET through the peer as a client would: status, headers, body text."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=START_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
        peer.base + path, headers=sent, allow_redirects=False
    ) as response:
        return response.status, response.headers, await response.text()


async def _spawn(name: str, argv: list[str], port: int, log: Path,
                 env: Mapping[str, str] | None = None) -> PeerProcess:
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink,
            env=dict(env) if env is not None else None,
        )
    peer = PeerProcess(name, process, port, log)
    await peer.wait_listening()
    return peer


# ----------------------------------------------------------------------------- nginx


def nginx_conf(listen: int, gateway: int, upstream: int, prefix: Path) -> str:
    """An nginx.conf using auth_request against the gateway; only `prefix` is written to."""
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    captures = "\n".join(
        f"            auth_request_set ${_var(h)} $upstream_http_{_var(h)};"
        for h in IDENTITY_HEADERS
    )
    sets = "\n".join(
        f"            proxy_set_header {h} ${_var(h)};" for h in IDENTITY_HEADERS
    )
    return f"""{user}worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}
{NGINX_SNIPPET.format(listen=listen, gateway=gateway, upstream=upstream,
                      captures=captures, sets=sets)}
}}
"""


def _var(header: str) -> str:
    return header.lower().replace("-", "_")


# The server block the README shows (identity header lines are generated from IDENTITY_HEADERS).
NGINX_SNIPPET = """\
    upstream clerk_gateway {{ server 127.0.0.1:{gateway}; }}
    upstream app {{ server 127.0.0.1:{upstream}; }}

    server {{
        listen 127.0.0.1:{listen};

        location / {{
            auth_request /_clerk_gateway_auth;
            # Copy the identity the gateway answered with. An empty variable means nginx
            # does not send the header at all, and the client's own copy is dropped.
{captures}
{sets}
            # nginx answers 401/403 from auth_request with its own HTML page; ask the gateway
            # again so the client gets the gateway's JSON body, status and WWW-Authenticate.
            error_page 401 403 = @clerk_gateway_denied;
            proxy_pass http://app;
        }}

        location = /_clerk_gateway_auth {{
            internal;
            proxy_pass http://clerk_gateway/;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            # The gateway prefers X-Forwarded-* (Traefik, Caddy): never let a client send them.
            proxy_set_header X-Forwarded-Uri "";
            proxy_set_header X-Forwarded-Method "";
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Request-Id $request_id;
        }}

        location @clerk_gateway_denied {{
            proxy_pass http://clerk_gateway;
            proxy_method GET;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-Uri "";
            proxy_set_header X-Forwarded-Method "";
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Request-Id $request_id;
        }}
    }}"""


@contextlib.asynccontextmanager
async def run_nginx(tmp_path: Path, gateway: int, upstream: int) -> AsyncIterator[PeerProcess]:
    """Start nginx (foreground, no root paths) in front of `upstream`, auth by `gateway`."""
    binary = require_binary(NGINX, "nginx")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "logs").mkdir()  # nginx opens <prefix>/logs/error.log before reading -g
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(port, gateway, upstream, prefix))
    argv = [binary, "-p", f"{prefix}/", "-c", str(conf),
            "-g", f"daemon off; pid {prefix}/nginx.pid; error_log stderr notice;"]
    peer = await _spawn("nginx", argv, port, prefix / "output.log")
    try:
        yield peer
    finally:
        await peer.stop()


# ----------------------------------------------------------------------------- Caddy


def caddyfile(listen: int, gateway: int, upstream: int) -> str:
    """A Caddyfile using forward_auth against the gateway; no admin API, no automatic HTTPS."""
    return CADDY_SNIPPET.format(listen=listen, gateway=gateway, upstream=upstream,
                                headers=" ".join(IDENTITY_HEADERS))


# Caddy 2.6.2 (Debian 12) quirk: when the gateway's answer lacks a header named in
# copy_headers, the upstream receives the literal text `{http.reverse_proxy.header.X-Org-Id}`
# instead of no header (the client's own copy is still replaced). Caddy >= 2.7 copies only
# the headers that are present.
CADDY_SNIPPET = """\
{{
    admin off
    auto_https off
}}

http://127.0.0.1:{listen} {{
    forward_auth 127.0.0.1:{gateway} {{
        uri /
        copy_headers {headers}
    }}
    reverse_proxy 127.0.0.1:{upstream}
}}
"""


@contextlib.asynccontextmanager
async def run_caddy(tmp_path: Path, gateway: int, upstream: int) -> AsyncIterator[PeerProcess]:
    """Start `caddy run` in front of `upstream`, auth by `gateway`; HOME/XDG under tmp_path."""
    binary = require_binary(CADDY, "caddy")
    home = tmp_path / "caddy"
    home.mkdir()
    port = free_port()
    config = home / "Caddyfile"
    config.write_text(caddyfile(port, gateway, upstream))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    argv = [binary, "run", "--config", str(config), "--adapter", "caddyfile"]
    peer = await _spawn("caddy", argv, port, home / "output.log", env)
    try:
        yield peer
    finally:
        await peer.stop()
