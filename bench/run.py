"""The benchmark: `python -m bench.run` (see --help). Writes bench/results.md and results.json.

Every contender runs as its own process on loopback; each is driven by the same wrk load,
alternating over several rounds; medians are reported, and ratios between contenders of the
same run are the headline. On a machine with two or more cores the server under test is pinned
to CPU 0 and wrk (plus the shared static upstream) to the other CPUs, so that the load
generator never steals the server's core and every contender gets exactly one core.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import hostile as hostile_shapes
from bench import report
from bench.load import LUA, Load, WrkResult, run_wrk
from bench.procs import (
    REPO,
    Processes,
    cpu_sets,
    descendants,
    ensure_tools,
    free_port,
    http_get,
    machine,
    nginx_binary,
    wait_http,
)

__all__ = ["main"]

ISSUER = "https://bench.clerk.accounts.dev"
PATH = "/api/hello"
STATIC_BODY = '{"upstream":"static","ok":true}'
STORM_WORKERS = 2  # the storm's key fetches are counted for all workers together
CONTENDERS = ("bare", "naive", "gateway_fa", "gateway_fa_logged", "gateway_fa_local",
              "gateway_fa_asserted", "gateway_fa_api_key", "gateway_fa_varied", "nginx_proxy",
              "nginx_proxy_varied", "relay_floor", "aiohttp_proxy", "gateway_proxy",
              "gateway_proxy_asserted", "gateway_proxy_varied")
# Contenders driven by bench/lua/varied.lua: a new path, and a new upstream answer, each time.
VARIED = ("gateway_fa_varied", "nginx_proxy_varied", "gateway_proxy_varied")
PATH_VARIED = "/api/varied/0"
TITLES = {
    "bare": "1. bare aiohttp, 200 on every path",
    "naive": "2. naive aiohttp + jwt.decode per request",
    "gateway_fa": "3. clerk-gateway forward-auth, cached token",
    "gateway_fa_logged": "3b. the same, JSON access log on (to a file)",
    "gateway_fa_local": "3c. the same, shared store off (GATEWAY_SHARED_STATE=false)",
    "gateway_fa_asserted": "3d. the same, signed assertions on",
    # Issue 14: a cached Clerk API key must cost no more than 1.1x a cached session token.
    "gateway_fa_api_key": "3m. clerk-gateway forward-auth, cached Clerk API key",
    # The fast doors keep the heads they parsed; here no head ever comes twice.
    "gateway_fa_varied": "3v. forward-auth, cached token, a new path every request",
    "nginx_proxy": "4. nginx proxy_pass -> static upstream",
    "nginx_proxy_varied": "4v. the same, a new path (and upstream answer) every request",
    # Not a proxy: what the loop, the sockets and llhttp cost, under any Python proxy.
    "relay_floor": "4f. floor: byte relay with llhttp parsing, no HTTP semantics (not a proxy)",
    "aiohttp_proxy": "5. plain aiohttp reverse proxy, no auth",
    "gateway_proxy": "6. clerk-gateway proxy mode, cached token",
    "gateway_proxy_asserted": "6b. the same, signed assertions on",
    "gateway_proxy_varied": "6v. the same, a new path (and upstream answer) every request",
}


@dataclass
class Contender:
    """One server under test."""

    key: str
    url: str = ""
    command: str = ""
    available: bool = True
    note: str = ""
    pid: int = 0
    runs: list[WrkResult] = field(default_factory=list)
    headers: dict[str, str] | None = None  # None: the session token


def _nginx_conf(workdir: Path, port: int, body: str, upstream_port: int | None) -> str:
    user = "user root;" if os.geteuid() == 0 else ""
    if upstream_port is None:
        # The static upstream; under /api/varied/ a head (X-Path) and body of each path's own.
        locations = (
            f"location / {{ default_type application/json; return 200 '{body}'; }}\n"
            "    location /api/varied/ { default_type application/json; add_header X-Path $uri;"
            " return 200 '{\"upstream\":\"varied\",\"path\":\"$uri\"}'; }")
        upstream = ""
    else:
        upstream = f"upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}"
        locations = ('location / { proxy_pass http://backend; proxy_http_version 1.1; '
                     'proxy_set_header Connection ""; }')
    temp = " ".join(f"{name}_temp_path {workdir}/{name};"
                    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {temp}
  keepalive_requests 100000000;
  {upstream}
  server {{
    listen 127.0.0.1:{port} reuseport;
    {locations}
  }}
}}
"""


class Bench:
    """Starts the contenders, runs the rounds and the side measurements."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from gateway.devissuer import DevIssuer, SigningKey

        self.args = args
        self.workdir = workdir
        self.procs = Processes(workdir)
        self.server_cpus, self.load_cpus = cpu_sets(not args.no_pin)
        self.load = Load(args.threads, args.connections, args.duration, args.warmup,
                         self.load_cpus)
        self.key = SigningKey(kid="ins_bench")
        self.pem = self.key.public_pem()
        self.pem_file = workdir / "public.pem"
        self.pem_file.write_text(self.pem)
        total = args.rounds * len(CONTENDERS) * (args.duration + args.warmup + 5) + 3600
        dev = DevIssuer(ISSUER, self.key)
        self.token = dev.token(org_id="org_2bench", org_slug="bench-org", role="admin",
                               plan="o:pro", features="o:dashboard,o:teams",
                               org_permissions_v2="manage,read", fpm="3,2",
                               lifetime=int(total))
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.secrets = {"$TOKEN": self.token}
        self.commands: dict[str, str] = {}
        self.contenders = {key: Contender(key) for key in CONTENDERS}
        self.upstream_url = ""
        self.loop = "uvloop"  # the event loop every Python contender runs on in this pass

    def new_pass(self, loop: str) -> None:
        """Start over with fresh contenders, all on `loop`."""
        self.procs.stop_all()
        self.loop = loop
        self.contenders = {key: Contender(key) for key in CONTENDERS}

    # -- processes -------------------------------------------------------------------------

    def _python_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "GATEWAY_"))}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        return env

    def _gateway_env(self, upstream: str | None = None, workers: int = 1,
                     extra: dict[str, str] | None = None) -> tuple[dict[str, str], int, int]:
        port, admin = free_port(), free_port()
        env = self._python_env()
        env.update(CLERK_JWT_KEY=self.pem, CLERK_ISSUER=ISSUER,
                   GATEWAY_LISTEN=f"127.0.0.1:{port}", GATEWAY_ADMIN_LISTEN=f"127.0.0.1:{admin}",
                   GATEWAY_LOG_LEVEL="WARNING", GATEWAY_WORKERS=str(workers),
                   GATEWAY_STATE_DIR=str(self.workdir / f"state-{port}"),
                   GATEWAY_EVENT_LOOP=self.loop)
        if upstream:
            env["GATEWAY_UPSTREAM"] = upstream
        env.update(extra or {})
        return env, port, admin

    def _asserted(self) -> dict[str, str]:
        """Environment for a gateway that signs an assertion per allowed request."""
        config = self.workdir / "asserted.yaml"
        config.write_text("assertion: {enabled: true, issuer: https://gateway.bench, "
                          "audience: https://api.bench}\n")
        return {"GATEWAY_CONFIG": str(config), "GATEWAY_STATE_DIR": str(self.workdir / "state")}

    def _start_gateway(self, name: str, env: dict[str, str], admin: int,
                       cpus: str | None) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "gateway", "serve"]
        proc = self.procs.start(name, cmd, env, cpus)
        shown = {k: ("<PEM>" if k == "CLERK_JWT_KEY" else v) for k, v in env.items()
                 if k.startswith(("CLERK_", "GATEWAY_"))}
        self.commands[name] = (" ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items())
                               + " " + _pin_prefix(cpus) + shlex.join(cmd))
        try:
            wait_http(f"http://127.0.0.1:{admin}/readyz", proc=proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}\n{self.procs.log_tail(name)}") from exc
        return proc

    def _start_app(self, name: str, kind: str, *extra: str,
                   cpus: str | None = None) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        cmd = [sys.executable, "-m", "bench.apps", kind, "--port", str(port), "--loop",
               self.loop, *extra]
        proc = self.procs.start(name, cmd, self._python_env(), cpus)
        self.commands[name] = _pin_prefix(cpus) + shlex.join(cmd)
        try:
            wait_http(f"http://127.0.0.1:{port}/_bench/ready", ok=(200, 401, 404), proc=proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}\n{self.procs.log_tail(name)}") from exc
        return port, proc

    def _start_nginx(self, name: str, upstream_port: int | None,
                     cpus: str | None) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        conf_dir = self.workdir / f"{name}.{self.loop}"  # one per pass
        conf_dir.mkdir()
        conf = conf_dir / "nginx.conf"
        conf.write_text(_nginx_conf(conf_dir, port, STATIC_BODY, upstream_port))
        cmd = [nginx_binary(), "-p", str(conf_dir), "-c", str(conf)]
        proc = self.procs.start(name, cmd, None, cpus)
        self.commands[name] = _pin_prefix(cpus) + shlex.join(cmd) + f"   # {conf.name}: " + (
            "return 200 static body" if upstream_port is None
            else "proxy_pass to the static upstream, keepalive 64")
        wait_http(f"http://127.0.0.1:{port}/", proc=proc)
        return port, proc

    # -- contenders ------------------------------------------------------------------------

    def start_contenders(self, only: set[str]) -> None:
        """Start the shared upstream and every selected contender, checking each answers."""
        upstream_port, _ = self._start_nginx("upstream_nginx", None, self.load_cpus)
        self.upstream_url = f"http://127.0.0.1:{upstream_port}"
        cpus = self.server_cpus
        c = self.contenders
        for key in CONTENDERS:
            if key not in only:
                c[key].available = False
                c[key].note = "not selected"
        if "bare" in only:
            port, proc = self._start_app("bare", "bare", cpus=cpus)
            c["bare"].pid = proc.pid
            c["bare"].url = f"http://127.0.0.1:{port}{PATH}"
        if "naive" in only:
            port, proc = self._start_app("naive", "naive", "--pem-file", str(self.pem_file),
                                         "--issuer", ISSUER, cpus=cpus)
            c["naive"].pid = proc.pid
            c["naive"].url = f"http://127.0.0.1:{port}{PATH}"
        if "gateway_fa" in only:
            env, port, admin = self._gateway_env()
            c["gateway_fa"].pid = self._start_gateway("gateway_fa", env, admin, cpus).pid
            c["gateway_fa"].url = f"http://127.0.0.1:{port}{PATH}"
        if "gateway_fa_logged" in only:
            env, port, admin = self._gateway_env(
                extra={"GATEWAY_LOG_LEVEL": "INFO", "GATEWAY_LOG_FORMAT": "json"})
            c["gateway_fa_logged"].pid = self._start_gateway(
                "gateway_fa_logged", env, admin, cpus).pid
            c["gateway_fa_logged"].url = f"http://127.0.0.1:{port}{PATH}"
        for key, upstream in (("gateway_fa_asserted", None),
                              ("gateway_proxy_asserted", self.upstream_url)):
            if key in only:
                env, port, admin = self._gateway_env(upstream=upstream, extra=self._asserted())
                c[key].pid = self._start_gateway(key, env, admin, cpus).pid
                c[key].url = f"http://127.0.0.1:{port}{PATH}"
        if "gateway_fa_local" in only:
            env, port, admin = self._gateway_env(extra={"GATEWAY_SHARED_STATE": "false"})
            c["gateway_fa_local"].pid = self._start_gateway(
                "gateway_fa_local", env, admin, cpus).pid
            c["gateway_fa_local"].url = f"http://127.0.0.1:{port}{PATH}"
        for key in ("nginx_proxy", "nginx_proxy_varied"):
            if key in only:
                port, proc = self._start_nginx(key, upstream_port, cpus)
                c[key].pid = proc.pid
                c[key].url = f"http://127.0.0.1:{port}{PATH}"
        for key, kind in (("relay_floor", "relay_floor"), ("aiohttp_proxy", "proxy")):
            if key in only:
                port, proc = self._start_app(key, kind, "--upstream", self.upstream_url,
                                             cpus=cpus)
                c[key].pid = proc.pid
                c[key].url = f"http://127.0.0.1:{port}{PATH}"
        if "gateway_fa_api_key" in only:
            self._start_api_key_gateway(c["gateway_fa_api_key"], cpus)
        for key, upstream in (("gateway_proxy", self.upstream_url),
                              ("gateway_proxy_varied", self.upstream_url),
                              ("gateway_fa_varied", None)):
            if key in only:
                env, port, admin = self._gateway_env(upstream=upstream)
                c[key].pid = self._start_gateway(key, env, admin, cpus).pid
                c[key].url = f"http://127.0.0.1:{port}{PATH}"
        for key in VARIED:
            if c[key].url:
                c[key].url = c[key].url.removesuffix(PATH) + PATH_VARIED
        for contender in c.values():
            contender.command = self.commands.get(contender.key, "")
            if contender.url:
                self._check(contender)

    def _start_issuer(self, name: str) -> str:
        """A counting fake Clerk (bench.apps issuer) on the load CPUs; returns its URL."""
        issuer_port = free_port()
        issuer_url = f"http://127.0.0.1:{issuer_port}"
        cmd = [sys.executable, "-m", "bench.apps", "issuer", "--port", str(issuer_port),
               "--issuer", issuer_url]
        self.procs.start(name, cmd, self._python_env(), self.load_cpus)
        wait_http(f"{issuer_url}/_bench/hits")
        return issuer_url

    def _start_api_key_gateway(self, contender: Contender, cpus: str | None) -> None:
        """Forward-auth accepting Clerk API keys, verified at a local fake Backend API once."""
        issuer_url = self._start_issuer("api_key_issuer")
        _, _, minted = http_get(f"{issuer_url}/_demo/api_key?sub=user_2demo&scopes=read")
        api_key = minted.decode().strip()
        self.secrets["$API_KEY"] = api_key
        contender.headers = {"Authorization": f"Bearer {api_key}"}
        config = self.workdir / "api_key.yaml"
        config.write_text("token_types: [session_token, api_key]\n")
        env, port, admin = self._gateway_env(extra={
            "CLERK_SECRET_KEY": "sk_test_devissuer", "CLERK_API_URL": issuer_url,
            "GATEWAY_CONFIG": str(config)})
        contender.pid = self._start_gateway("gateway_fa_api_key", env, admin, cpus).pid
        contender.url = f"http://127.0.0.1:{port}{PATH}"

    def _check(self, contender: Contender) -> None:
        """Prove the contender does its job before measuring it."""
        status, headers, body = http_get(contender.url, contender.headers or self.headers)
        anon_status, _, _ = http_get(contender.url)
        key = contender.key
        problem = ""
        if status != 200:
            problem = f"answered {status} to a valid token"
        elif key in ("naive", "gateway_fa", "gateway_fa_logged", "gateway_fa_local",
                     "gateway_proxy", "gateway_fa_asserted", "gateway_proxy_asserted",
                     "gateway_fa_varied", "gateway_proxy_varied") and anon_status != 401:
            problem = f"answered {anon_status} without a token (expected 401)"
        elif key.startswith("gateway_fa") and headers.get("X-User-Id") != "user_2demo":
            problem = "no X-User-Id identity header"
        elif key == "gateway_fa_asserted" and "X-Gateway-Assertion" not in headers:
            problem = "no X-Gateway-Assertion header"
        elif key in ("nginx_proxy", "relay_floor", "aiohttp_proxy", "gateway_proxy",
                     "gateway_proxy_asserted") and (
                body.decode(errors="replace").strip() != STATIC_BODY):
            problem = f"body is not the upstream's ({body[:60]!r})"
        elif key in ("nginx_proxy_varied", "gateway_proxy_varied") and (
                not body.startswith(b'{"upstream":"varied"') or "X-Path" not in headers):
            problem = f"not the upstream's varied answer ({body[:60]!r})"
        if not problem:
            return
        if key == "gateway_proxy":
            contender.available = False
            contender.note = ("not available yet: with GATEWAY_UPSTREAM set the gateway "
                              f"{problem}, so it does not proxy")
            return
        raise RuntimeError(f"{TITLES[key]}: {problem}")

    def rounds(self) -> None:
        """Run every available contender once per round, rotating the order each round."""
        active = [c for c in self.contenders.values() if c.available and c.url]
        for number in range(self.args.rounds):
            shift = number % len(active) if active else 0
            for contender in active[shift:] + active[:shift]:
                script = LUA / ("varied.lua" if contender.key in VARIED else "report.lua")
                result = run_wrk(contender.url, self.load, contender.headers or self.headers,
                                 script=script, secrets=self.secrets, pids=[contender.pid])
                contender.runs.append(result)
                print(f"  round {number + 1}: {TITLES[contender.key]:48s} "
                      f"{result.rps:9.0f} req/s  p99 {result.p99_ms:6.2f} ms  "
                      f"{result.cpu_us_per_request or 0:6.1f} us CPU/req"
                      + (f"  non-2xx {result.non_2xx}" if result.non_2xx else "")
                      + (f"  socket errors {result.socket_errors}"
                         if result.socket_errors else ""), flush=True)

    # -- side measurements -----------------------------------------------------------------

    def micro(self, kind: str, *args: str, module: str = "bench.micro") -> dict[str, Any]:
        """Run one in-process measurement (bench.micro, bench.split) on the server CPU."""
        cmd = [sys.executable, "-m", module, kind, *args]
        full = ["taskset", "-c", self.server_cpus, *cmd] if self.server_cpus else cmd
        print(f"  {kind}: {shlex.join(cmd)}", flush=True)
        out = subprocess.run(full, capture_output=True, text=True, env=self._python_env(),
                             cwd=REPO, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{module} {kind} failed: {out.stderr[-800:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        result["command"] = _pin_prefix(self.server_cpus) + shlex.join(cmd)
        return result

    def storm(self) -> dict[str, Any]:
        """Flood a JWKS-backed gateway (two workers sharing one store) with random unknown
        kids; count the key fetches of all workers together at the issuer."""
        cooldown, seconds = self.args.storm_cooldown, self.args.storm_duration
        issuer_url = self._start_issuer("storm_issuer")
        config = self.workdir / "storm.yaml"
        config.write_text(f"keys:\n  unknown_kid_cooldown_seconds: {cooldown:g}\n")
        env, port, admin = self._gateway_env(workers=STORM_WORKERS, extra={
            "CLERK_ISSUER": issuer_url, "CLERK_JWKS_URL": f"{issuer_url}/.well-known/jwks.json",
            "GATEWAY_CONFIG": str(config)})
        env.pop("CLERK_JWT_KEY")
        gateway = self._start_gateway("storm_gateway", env, admin, self.server_cpus)
        url = f"http://127.0.0.1:{port}/api/storm"
        before = len(_jwks_times(issuer_url))
        result = run_wrk(url, self.load, script=LUA / "storm.lua", duration=seconds,
                         env={"BENCH_ISS": issuer_url}, warmup=False,
                         pids=[gateway.pid, *descendants(gateway.pid)])
        times = _jwks_times(issuer_url)
        during = times[before:]
        gaps = [b - a for a, b in itertools.pairwise(during)]
        _, _, token = http_get(f"{issuer_url}/_demo/token?lifetime=600")
        valid_status, _, _ = http_get(url, {"Authorization": f"Bearer {token.decode().strip()}"})
        fetches = len(during)
        allowed = math.floor(seconds / cooldown) + 1 if cooldown > 0 else None
        return {
            "workers": STORM_WORKERS, "cooldown_seconds": cooldown, "duration_seconds": seconds,
            "requests": result.requests, "rps": result.rps, "non_2xx": result.non_2xx,
            "p99_ms": result.p99_ms,
            "key_fetches": fetches, "fetches_per_minute": fetches * 60 / seconds,
            "cooldown_rate_per_minute": 60 / cooldown if cooldown > 0 else None,
            "allowed_fetches": allowed,
            "valid_token_after_storm": valid_status,
            "min_seconds_between_fetches": min(gaps) if gaps else None,
            "cpu_us_per_request": result.cpu_us_per_request,
            "wrk_command": result.command + f"   # env BENCH_ISS={issuer_url}",
            "gateway_command": self.commands["storm_gateway"]
            + f"   # {config.name}: keys.unknown_kid_cooldown_seconds={cooldown:g}",
        }

    def hostile(self) -> dict[str, Any]:
        """Each hostile shape (bench/hostile.py) vs an ordinary request, on one gateway."""
        config = self.workdir / "hostile.yaml"
        config.write_text(hostile_shapes.CONFIG)
        env, port, admin = self._gateway_env(extra={"GATEWAY_CONFIG": str(config)})
        gateway = self._start_gateway("hostile_gateway", env, admin, self.server_cpus)
        base = f"http://127.0.0.1:{port}"
        shapes = {"ordinary": (hostile_shapes.ORDINARY_PATH, self.headers, 200)}
        for name, shape in hostile_shapes.SHAPES.items():
            shapes[name] = (shape.path, shape.headers, shape.status)
        out: dict[str, Any] = {"command": self.commands["hostile_gateway"]
                               + f"   # {config.name}: one public route, /public"}
        for name, (path, headers, status) in shapes.items():
            answered, _, _ = http_get(base + path, headers)
            if answered != status:
                raise RuntimeError(f"hostile shape {name}: {answered}, expected {status}")
            result = run_wrk(base + path, self.load, headers, secrets=self.secrets,
                             pids=[gateway.pid])
            print(f"  {name:22s} {result.rps:9.0f} req/s  "
                  f"{result.cpu_us_per_request or 0:7.1f} us CPU/req", flush=True)
            out[name] = {"status": status, **asdict(result)}
        ordinary = out["ordinary"]["cpu_us_per_request"]
        for name in hostile_shapes.SHAPES:
            cpu = out[name]["cpu_us_per_request"]
            out[name]["over_ordinary"] = cpu / ordinary if cpu and ordinary else None
            out[name]["command"] = out[name]["command"].replace(
                next(iter(hostile_shapes.SHAPES[name].headers.values())), "<hostile value>")
        return out

    def scaling(self, mode: str) -> dict[str, Any]:
        """Throughput of a mode with GATEWAY_WORKERS=1 vs 2, nothing pinned."""
        counts: dict[int, int] = {}
        urls: dict[int, str] = {}
        upstream = None
        if mode == "proxy":
            upstream_port, _ = self._start_nginx(f"scaling_upstream_{mode}", None, None)
            upstream = f"http://127.0.0.1:{upstream_port}"
        for workers in (1, 2):
            env, port, admin = self._gateway_env(upstream=upstream, workers=workers)
            proc = self._start_gateway(f"scaling_{mode}_w{workers}", env, admin, None)
            time.sleep(0.5)
            counts[workers] = len(descendants(proc.pid))
            urls[workers] = f"http://127.0.0.1:{port}{PATH}"
        if counts[2] <= counts[1]:
            return {"available": False,
                    "note": "not available yet: GATEWAY_WORKERS=2 starts no extra process "
                            f"({counts[1]} vs {counts[2]} child processes)"}
        load = Load(self.args.threads, self.args.connections, self.args.duration,
                    self.args.warmup, None)
        runs: dict[int, list[float]] = {1: [], 2: []}
        for number in range(self.args.rounds):
            for workers in ((1, 2) if number % 2 == 0 else (2, 1)):
                result = run_wrk(urls[workers], load, self.headers, secrets=self.secrets)
                runs[workers].append(result.rps)
                print(f"  round {number + 1}: {mode} workers={workers} {result.rps:9.0f} req/s",
                      flush=True)
        w1, w2 = statistics.median(runs[1]), statistics.median(runs[2])
        return {"available": True, "processes": counts, "rps": runs,
                "median_w1": w1, "median_w2": w2, "ratio": w2 / w1 if w1 else None,
                "mode": mode, "loop": self.loop,
                "commands": {w: self.commands[f"scaling_{mode}_w{w}"] for w in (1, 2)}}


def _pin_prefix(cpus: str | None) -> str:
    return f"taskset -c {cpus} " if cpus else ""


def _jwks_times(issuer_url: str) -> list[float]:
    _, _, body = http_get(f"{issuer_url}/_bench/hits")
    return [float(t) for t in json.loads(body).get("jwks_times", [])]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark clerk-gateway against bare aiohttp, a naive PyJWT service, "
                    "nginx and a plain aiohttp proxy; writes results.md and results.json.")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender (3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="unrecorded warm-up seconds before each run (1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--only", default=",".join(CONTENDERS),
                        help="comma list of contenders: " + ",".join(CONTENDERS))
    parser.add_argument("--skip", default="",
                        help="comma list of side measurements to skip: "
                             "http,hostile,split,verify,storm,memory,scaling")
    parser.add_argument("--storm-duration", type=float, default=30.0)
    parser.add_argument("--storm-cooldown", type=float, default=5.0,
                        help="keys.unknown_kid_cooldown_seconds for the storm (5)")
    parser.add_argument("--memory-entries", type=int, default=1_000_000)
    parser.add_argument("--e2e-tokens", type=int, default=50_000)
    parser.add_argument("--loops", default="uvloop,asyncio",
                        help="event loops, one pass each; the first is the headline "
                             "(uvloop,asyncio)")
    parser.add_argument("--label", default="",
                        help="conditions to print with the results (e.g. 'quiet machine')")
    parser.add_argument("--out", default=str(REPO / "bench"),
                        help="directory for results.md / results.json (bench/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the whole benchmark and write the report."""
    args = _parser().parse_args(argv)
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    loops = [loop.strip() for loop in args.loops.split(",") if loop.strip()]
    unknown = ((only - set(CONTENDERS))
               | (skip - {"http", "hostile", "split", "verify", "storm", "memory", "scaling"})
               | (set(loops) - {"uvloop", "asyncio"}))
    if unknown:
        raise SystemExit(f"unknown names: {', '.join(sorted(unknown))}")
    installed = ensure_tools()
    started = time.time()
    results: dict[str, Any] = {
        "label": args.label,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "command": shlex.join([Path(sys.executable).name, "-m", "bench.run",
                               *(sys.argv[1:] if argv is None else argv)]),
        "installed": installed,
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix="clerk-gateway-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        results["pinning"] = {"server_cpus": bench.server_cpus, "load_cpus": bench.load_cpus}
        results["load"] = asdict(bench.load)
        try:
            results["headline_loop"] = loops[0]
            results["loop_passes"] = {}
            for loop in loops:
                bench.new_pass(loop)
                print(f"starting contenders on {loop}", flush=True)
                bench.start_contenders(only)
                print(f"measuring on {loop}: {args.rounds} rounds x {len(only)} contenders, "
                      f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s",
                      flush=True)
                bench.rounds()
                results["loop_passes"][loop] = {
                    key: {"title": TITLES[key], "available": c.available, "note": c.note,
                          "url": c.url, "server_command": c.command,
                          "runs": [asdict(r) for r in c.runs]}
                    for key, c in bench.contenders.items()}
                results["upstream_command"] = bench.commands.get("upstream_nginx", "")
                bench.procs.stop_all()
            results["contenders"] = results["loop_passes"][loops[0]]
            bench.new_pass(loops[0])
            if "http" not in skip:
                print("per-request CPU in-process (no sockets)", flush=True)
                results["http_cost"] = bench.micro("http-cost")
            if "hostile" not in skip:
                print("hostile requests vs an ordinary one (sockets, then in-process)",
                      flush=True)
                results["hostile"] = bench.hostile()
                bench.procs.stop_all()
                results["hostile_cost"] = bench.micro("hostile-cost")
            if "split" not in skip:
                print("CPU per request by stage (in-process, profiled)", flush=True)
                results["split"] = {mode: bench.micro(mode, "--loop", loops[0],
                                                      module="bench.split")
                                    for mode in ("forward_auth", "proxy")}
            if "verify" not in skip:
                print("first-seen vs cached token (in-process)", flush=True)
                results["verify"] = bench.micro("verify")
            if "storm" not in skip:
                print(f"unknown-kid storm ({args.storm_duration:g} s)", flush=True)
                results["storm"] = bench.storm()
                bench.procs.stop_all()
            if "memory" not in skip:
                print("memory with distinct tokens", flush=True)
                results["memory_cache"] = bench.micro(
                    "cache-memory", "--entries", str(args.memory_entries))
                results["memory_e2e"] = bench.micro(
                    "e2e-memory", "--tokens", str(args.e2e_tokens),
                    "--bound", str(max(1, min(10_000, args.e2e_tokens // 5))))
            if "scaling" not in skip:
                print("scaling with GATEWAY_WORKERS", flush=True)
                results["scaling"] = bench.scaling("forward_auth")
                results["scaling_proxy"] = bench.scaling("proxy")
        finally:
            bench.procs.stop_all()
    results["seconds"] = round(time.time() - started, 1)
    results = json.loads(json.dumps(results, default=str).replace(tmp, "$BENCH_TMP"))
    out = Path(args.out)
    report.write(results, out / "results.json", out / "results.md")
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    print(report.summary(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
