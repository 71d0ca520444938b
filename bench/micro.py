"""In-process measurements, each printed as one JSON object: `python -m bench.micro KIND`.

- verify: first-seen tokens (signature checked) vs one cached token through the gateway's
  Verifier, side by side with a bare `jwt.decode(token, pubkey, algorithms=["RS256"])`.
- cache-memory: resident memory while 1,000,000 distinct verified-token entries (real Verified
  values) go through the Verifier's TokenCache at its configured bound.
- e2e-memory: distinct signed tokens verified end to end by Verifier.verify, with RSS sampled.
- http-cost: CPU per request of bare aiohttp vs the gateway's public app, in one process: raw
  HTTP bytes fed to aiohttp's protocol over an in-memory transport (no sockets, no wrk), so the
  ratio holds even on a machine that other work keeps busy.
- hostile-cost: the same, for the hostile requests of bench/hostile.py (refused or passed
  without a token) next to an ordinary cached-token request on the same gateway.
- hostile-cookies: CPU per request of the gateway's forward-auth door (in memory, as
  http-cost) for 7 KB hostile Cookie headers (`;;;...`, `%%%...`, `___..__session=`, blanks,
  ten thousand tiny cookies), on a route that needs a token, on a public route and behind a
  Bearer header, each as a multiple of an ordinary request with a cached Bearer token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding
from cryptography.hazmat.primitives.hashes import SHA256
from prometheus_client import CollectorRegistry

from gateway.app import Gateway
from gateway.auth.claims import identity_from_claims
from gateway.auth.jwks import IssuerKeys
from gateway.auth.verify import Verified, Verifier
from gateway.config import Settings, load_settings
from gateway.devissuer import DevIssuer, SigningKey
from gateway.logs import setup_logging
from gateway.metrics import Metrics
from gateway.server import public_runner

__all__ = ["main"]

ISSUER = "https://bench.clerk.accounts.dev"


def rss_bytes() -> int:
    """This process's resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _verifier(settings: Settings) -> Verifier:
    metrics = Metrics(CollectorRegistry())
    keys = {i.name: IssuerKeys(i, settings.keys, None, metrics)  # type: ignore[arg-type]
            for i in settings.issuers}  # a pinned PEM key never uses the HTTP session
    return Verifier(settings, keys, metrics)


def _clerk_claims(dev: DevIssuer, n: int, lifetime: int = 3600) -> dict[str, Any]:
    return dev.claims(sub=f"user_{n:012d}", sid=f"sess_{n:012d}", org_id="org_2bench",
                      org_slug="bench-org", role="admin", plan="o:pro",
                      features="o:dashboard,o:teams", org_permissions_v2="manage,read",
                      fpm="3,2", lifetime=lifetime)


async def _time_verify(verifier: Verifier, tokens: list[str]) -> float:
    start = time.perf_counter()
    for token in tokens:
        await verifier.verify(token)
    return time.perf_counter() - start


async def bench_verify(n_tokens: int, passes: int, cached_reps: int) -> dict[str, Any]:
    """Per-token microseconds: bare PyJWT decode, gateway first-seen, gateway cached."""
    key = SigningKey(kid="ins_bench")
    settings = load_settings({"CLERK_JWT_KEY": key.public_pem(), "CLERK_ISSUER": ISSUER})
    verifier = _verifier(settings)
    dev = DevIssuer(ISSUER, key)
    tokens = [dev.sign(_clerk_claims(dev, i)) for i in range(n_tokens)]
    public = key.private.public_key()
    signing_inputs = [(t.rsplit(".", 1)[0].encode(),
                       jwt.utils.base64url_decode(t.rsplit(".", 1)[1])) for t in tokens]
    bare, first, rsa_only, ratios = [], [], [], []
    for _ in range(passes):
        start = time.perf_counter()
        for token in tokens:
            jwt.decode(token, public, algorithms=["RS256"])
        bare_s = time.perf_counter() - start
        verifier.cache.clear()
        first_s = await _time_verify(verifier, tokens)
        start = time.perf_counter()
        for data, signature in signing_inputs:
            public.verify(signature, data, padding.PKCS1v15(), SHA256())
        rsa_s = time.perf_counter() - start
        bare.append(bare_s / n_tokens * 1e6)
        first.append(first_s / n_tokens * 1e6)
        rsa_only.append(rsa_s / n_tokens * 1e6)
        ratios.append(first_s / bare_s)
    repeated = [tokens[0]] * cached_reps
    await verifier.verify(tokens[0])
    cached = [await _time_verify(verifier, repeated) / cached_reps * 1e6 for _ in range(passes)]
    return {
        "tokens": n_tokens, "passes": passes, "cached_reps": cached_reps,
        "token_bytes": len(tokens[0]),
        "bare_pyjwt_us": {"median": statistics.median(bare), "min": min(bare)},
        "gateway_first_seen_us": {"median": statistics.median(first), "min": min(first)},
        "gateway_cached_us": {"median": statistics.median(cached), "min": min(cached)},
        "rsa_verify_only_us": {"median": statistics.median(rsa_only), "min": min(rsa_only)},
        "first_seen_over_bare": {"median": statistics.median(ratios), "min": min(ratios),
                                 "per_pass": ratios},
    }


def cache_memory(entries: int, bound: int, sample_every: int) -> dict[str, Any]:
    """RSS while `entries` distinct realistic Verified values go through a bounded cache."""
    key = SigningKey(kid="ins_bench")
    env = {"CLERK_JWT_KEY": key.public_pem(), "CLERK_ISSUER": ISSUER}
    settings = dataclasses.replace(load_settings(env), token_cache_size=bound)
    verifier = _verifier(settings)
    issuer = settings.issuers[0]
    dev = DevIssuer(ISSUER, key)
    cache = verifier.cache
    sample_every = sample_every or max(1, entries // 20)
    template = _clerk_claims(dev, 0)
    now = time.time()
    gc.collect()
    baseline = rss_bytes()
    samples = [(0, baseline)]
    start = time.perf_counter()
    for n in range(1, entries + 1):
        claims = dict(template, sub=f"user_{n:012d}", sid=f"sess_{n:012d}",
                      jti=uuid.uuid4().hex[:20])
        identity = identity_from_claims(claims, issuer.preset, issuer.claims)
        verified = Verified(identity, verifier._headers_for(identity))
        token_standin = f"{n}.{claims['jti']}"  # the cache stores sha256(token), never the token
        cache.put(cache.key(token_standin), verified, identity.expires_at, now)
        if n % sample_every == 0:
            samples.append((n, rss_bytes()))
    elapsed = time.perf_counter() - start
    return _memory_report("cache", entries, bound, len(cache), baseline, samples, elapsed)


async def e2e_memory(tokens: int, bound: int, alg: str, sample_every: int) -> dict[str, Any]:
    """RSS while `tokens` distinct signed tokens are verified end to end by Verifier.verify."""
    if alg == "EdDSA":
        private: Any = ed25519.Ed25519PrivateKey.generate()
    else:
        private = SigningKey(kid="ins_bench").private
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    settings = load_settings({"CLERK_JWT_KEY": pem, "CLERK_ISSUER": ISSUER})
    issuers = tuple(dataclasses.replace(i, algorithms=(alg,)) for i in settings.issuers)
    settings = dataclasses.replace(settings, token_cache_size=bound, issuers=issuers)
    verifier = _verifier(settings)
    dev = DevIssuer(ISSUER)
    sample_every = sample_every or max(1, tokens // 20)
    gc.collect()
    baseline = rss_bytes()
    samples = [(0, baseline)]
    start = time.perf_counter()
    for n in range(1, tokens + 1):
        token = jwt.encode(_clerk_claims(dev, n), private, algorithm=alg,
                           headers={"kid": "ins_bench"})
        await verifier.verify(token)
        if n % sample_every == 0:
            samples.append((n, rss_bytes()))
    elapsed = time.perf_counter() - start
    report = _memory_report("e2e", tokens, bound, len(verifier.cache), baseline, samples, elapsed)
    report["algorithm"] = alg
    return report


def _memory_report(kind: str, entries: int, bound: int, held: int, baseline: int,
                   samples: list[tuple[int, int]], elapsed: float) -> dict[str, Any]:
    at_bound = next((rss for n, rss in samples if n >= bound), samples[-1][1])
    final = samples[-1][1]
    per_entry = (at_bound - baseline) / min(bound, entries) if entries else 0.0
    return {
        "kind": kind, "entries": entries, "bound": bound, "held_at_end": held,
        "rss_baseline_mb": baseline / 2**20, "rss_at_bound_mb": at_bound / 2**20,
        "rss_final_mb": final / 2**20,
        "growth_after_bound_mb": (final - at_bound) / 2**20,
        "bytes_per_entry": per_entry, "seconds": elapsed,
        "samples": [{"entries": n, "rss_mb": round(rss / 2**20, 1)} for n, rss in samples],
    }


class _MemoryTransport(asyncio.Transport):
    """Collects what aiohttp writes and wakes the caller when a response is out."""

    def __init__(self) -> None:
        super().__init__()
        self.written: asyncio.Future[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.written is not None and not self.written.done():
            self.written.set_result(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000),
                "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def close(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def _request_cost(runner: web.AppRunner, raw: bytes, n: int, reps: int
                        ) -> tuple[list[float], bytes]:
    await runner.setup()
    server = runner.server
    assert server is not None
    protocol = server()
    transport = _MemoryTransport()
    protocol.connection_made(transport)
    loop = asyncio.get_running_loop()
    response = b""

    async def one() -> bytes:
        transport.written = loop.create_future()
        protocol.data_received(raw)
        return await transport.written

    for _ in range(500):
        response = await one()
    costs = []
    for _ in range(reps):
        start = time.process_time()
        for _ in range(n):
            await one()
        costs.append((time.process_time() - start) / n * 1e6)
    protocol.connection_lost(None)
    await runner.cleanup()
    return costs, response


async def http_cost(n: int, reps: int) -> dict[str, Any]:
    """CPU microseconds per request: bare aiohttp app vs the gateway's forward-auth app."""
    from bench.apps import bare_app

    key = SigningKey(kid="ins_bench")
    dev = DevIssuer(ISSUER, key)
    token = dev.sign(_clerk_claims(dev, 1))
    raw = (f"GET /api/hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
           f"Authorization: Bearer {token}\r\n\r\n").encode()
    out: dict[str, Any] = {"requests_per_rep": n, "reps": reps}
    names = ("bare", "gateway_fa", "gateway_fa_aiohttp_door", "gateway_fa_access_log",
             "gateway_fa_local")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CLERK_JWT_KEY": key.public_pem(), "CLERK_ISSUER": ISSUER,
               "GATEWAY_STATE_DIR": str(Path(tmp) / "state")}  # never the user's own
        settings = load_settings(env)
        local = load_settings({**env, "GATEWAY_SHARED_STATE": "false"})
        off = Path(tmp) / "fast-path-off.yaml"  # the aiohttp door answers every request
        off.write_text("forward_auth:\n  fast_path: false\n")
        slow_door = load_settings(env, str(off))
        for _ in range(2):  # alternate: bare, gateway, its variants, bare, gateway, ...
            makers: tuple[Callable[[], web.AppRunner], ...] = (
                lambda: web.AppRunner(bare_app(), access_log=None),
                lambda: public_runner(Gateway(settings)),
                lambda: public_runner(Gateway(slow_door)),
                lambda: public_runner(Gateway(settings)),
                lambda: public_runner(Gateway(local)),
            )
            for name, make in zip(names, makers, strict=True):
                gc.collect()  # each measured with only its own objects alive
                with _access_log(name == "gateway_fa_access_log"):
                    costs, response = await _request_cost(make(), raw, n, reps)
                if not response.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"{name} answered {response[:40]!r}")
                out.setdefault(name, []).extend(costs)
    for name in names:
        out[f"{name}_us"] = {"min": min(out[name]), "median": statistics.median(out[name])}
    out["gateway_over_bare"] = out["gateway_fa_us"]["min"] / out["bare_us"]["min"]
    out["aiohttp_door_over_bare"] = (
        out["gateway_fa_aiohttp_door_us"]["min"] / out["bare_us"]["min"])
    out["shared_store_over_local"] = (
        out["gateway_fa_us"]["min"] / out["gateway_fa_local_us"]["min"])
    return out


async def hostile_cost(n: int, reps: int) -> dict[str, Any]:
    """CPU microseconds per request: each hostile shape vs an ordinary cached-token request."""
    from bench.hostile import CONFIG, ORDINARY_PATH, SHAPES, raw_request

    key = SigningKey(kid="ins_bench")
    dev = DevIssuer(ISSUER, key)
    requests = {"ordinary": (raw_request(ORDINARY_PATH, {
        "Authorization": f"Bearer {dev.sign(_clerk_claims(dev, 1))}"}), 200)}
    for name, shape in SHAPES.items():
        requests[name] = (raw_request(shape.path, shape.headers), shape.status)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "hostile.yaml"
        config.write_text(CONFIG)
        settings = load_settings(
            {"CLERK_JWT_KEY": key.public_pem(), "CLERK_ISSUER": ISSUER}, str(config))
    out: dict[str, Any] = {"requests_per_rep": n, "reps": reps}
    for _ in range(2):  # alternate the shapes, each on a fresh gateway
        for name, (raw, status) in requests.items():
            gc.collect()
            costs, response = await _request_cost(public_runner(Gateway(settings)), raw, n, reps)
            if not response.startswith(f"HTTP/1.1 {status}".encode()):
                raise RuntimeError(f"{name} answered {response[:40]!r}, expected {status}")
            out.setdefault(name, []).extend(costs)
    ordinary = min(out["ordinary"])
    for name in requests:
        out[f"{name}_us"] = {"min": min(out[name]), "median": statistics.median(out[name])}
        out[f"{name}_over_ordinary"] = min(out[name]) / ordinary
    return out


_HOSTILE_BYTES = 7000  # with a Bearer token too, the head stays under 8190 bytes


def _hostile_cookies(token: str) -> dict[str, str]:
    """8 KB Cookie headers built to be slow for a cookie parser, by name."""
    n = _HOSTILE_BYTES
    return {
        "semicolons": ";" * n,
        "percent_signs": "%" * n,
        "underscores_then_session": "_" * (n - len(token) - 11) + f"; __session={token}",
        "blanks_then_session": " " * (n - len(token) - 11) + f"; __session={token}",
        "tiny_cookies": "a=1; " * (n // 5),
        "escaped_letters": "%73" * (n // 3),
        "session_mentions": "x__session=1; " * 8 + ";" * (n - 112),
    }


async def hostile_cookies(n: int, reps: int) -> dict[str, Any]:
    """CPU microseconds per request with hostile Cookie headers, as multiples of an
    ordinary request (a cached Bearer token) through the same forward-auth door."""
    from aiohttp._cookie_helpers import parse_cookie_header

    key = SigningKey(kid="ins_bench")
    dev = DevIssuer(ISSUER, key)
    token = dev.sign(_clerk_claims(dev, 1))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "routes.yaml"
        config.write_text("routes:\n  - {name: open, path_prefix: /public, access: public}\n")
        settings = load_settings(
            {"CLERK_JWT_KEY": key.public_pem(), "CLERK_ISSUER": ISSUER}, str(config))

    def request(path: str, *lines: str) -> bytes:
        head = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1:8080", *lines]
        return ("\r\n".join(head) + "\r\n\r\n").encode()

    cases = {"ordinary_bearer": request("/api", f"Authorization: Bearer {token}"),
             "ordinary_cookie": request("/api", f"Cookie: theme=dark; __session={token}")}
    for name, cookie in _hostile_cookies(token).items():
        cases[f"{name}_needs_token"] = request("/api", f"Cookie: {cookie}")
        cases[f"{name}_public_route"] = request("/public/x", f"Cookie: {cookie}")
        cases[f"{name}_with_bearer"] = request(
            "/api", f"Authorization: Bearer {token}", f"Cookie: {cookie}")
    out: dict[str, Any] = {"requests_per_rep": n, "reps": reps, "cookie_bytes": _HOSTILE_BYTES}
    for name, raw in cases.items():
        gc.collect()
        costs, response = await _request_cost(public_runner(Gateway(settings)), raw, n, reps)
        out[f"{name}_us"] = {"min": min(costs), "median": statistics.median(costs),
                             "status": int(response.split()[1])}
    ordinary = out["ordinary_bearer_us"]["min"]
    ratios = {name[:-3]: value["min"] / ordinary for name, value in out.items()
              if name.endswith("_us") and name != "ordinary_bearer_us"}
    out["over_ordinary"] = ratios
    out["worst"] = max(ratios.items(), key=lambda item: item[1])
    start = time.process_time()  # what a full parse (aiohttp's, used before) would cost
    for _ in range(20):
        parse_cookie_header(";" * _HOSTILE_BYTES)
    out["full_parse_semicolons_us"] = (time.process_time() - start) / 20 * 1e6
    return out


@contextlib.contextmanager
def _access_log(enabled: bool) -> Iterator[None]:
    """The gateway's JSON access log at INFO (written to /dev/null) while enabled."""
    if not enabled:
        yield
        return
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with open(os.devnull, "w") as sink:
        setup_logging("INFO", "json", sink)
        try:
            yield
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run one measurement and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.micro")
    sub = parser.add_subparsers(dest="kind", required=True)
    verify = sub.add_parser("verify")
    verify.add_argument("--tokens", type=int, default=2000)
    verify.add_argument("--passes", type=int, default=5)
    verify.add_argument("--cached-reps", type=int, default=100_000)
    cache = sub.add_parser("cache-memory")
    cache.add_argument("--entries", type=int, default=1_000_000)
    cache.add_argument("--bound", type=int, default=Settings.__dataclass_fields__[
        "token_cache_size"].default)
    cache.add_argument("--sample-every", type=int, default=0, help="default: entries / 20")
    e2e = sub.add_parser("e2e-memory")
    e2e.add_argument("--tokens", type=int, default=50_000)
    e2e.add_argument("--bound", type=int, default=10_000)
    e2e.add_argument("--alg", choices=("RS256", "EdDSA"), default="RS256")
    e2e.add_argument("--sample-every", type=int, default=0, help="default: tokens / 20")
    http = sub.add_parser("http-cost")
    http.add_argument("--requests", type=int, default=5000)
    http.add_argument("--reps", type=int, default=5)
    for name in ("hostile-cost", "hostile-cookies"):
        hostile = sub.add_parser(name)
        hostile.add_argument("--requests", type=int, default=1000)
        hostile.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    if args.kind == "http-cost":
        result = asyncio.run(http_cost(args.requests, args.reps))
    elif args.kind == "hostile-cost":
        result = asyncio.run(hostile_cost(args.requests, args.reps))
    elif args.kind == "hostile-cookies":
        result = asyncio.run(hostile_cookies(args.requests, args.reps))
    elif args.kind == "verify":
        result = asyncio.run(bench_verify(args.tokens, args.passes, args.cached_reps))
    elif args.kind == "cache-memory":
        result = cache_memory(args.entries, args.bound, args.sample_every)
    else:
        result = asyncio.run(e2e_memory(args.tokens, args.bound, args.alg, args.sample_every))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
