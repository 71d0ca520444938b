"""Where a cached-token request's CPU goes, by stage: `python -m bench.split MODE`.

One process on the chosen loop holds a minimal raw upstream, the gateway's public listener as
`serve` builds it (the mode's fast door in front) and keep-alive raw clients on loopback. After
a warm-up, cProfile records N requests; each function's own time is put in one stage by the
module it lives in (a C function, such as a transport's write or llhttp's feed, by the module
that called it), and the harness's own functions are left out:

- parse: the llhttp front (heads, aiohttp's checks), request ids, header multidicts;
- decide: path normalisation, routing, token extraction, the cached verification, the
  revocation check, the rule, identity headers;
- relay: the proxy's upstream exchange (hygiene, target, pool, response parsing, tasks);
- write: building and writing answers to the client;
- observe: metrics, the latency histogram, the access log;
- other: the rest (asyncio's Python parts, the proxy door's bookkeeping).

cProfile's own overhead inflates every stage alike; the shares, not the microseconds, are
the result. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time
from collections import defaultdict
from typing import Any, cast

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.devissuer import DevIssuer, SigningKey
from gateway.loops import loop_name, run
from gateway.server import public_runner

__all__ = ["main"]

ISSUER = "https://bench.clerk.accounts.dev"
_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
             b'\r\n{"ok":true}')
STAGES = ("parse", "decide", "relay", "write", "observe", "other")
# (path fragment or function-name fragment, stage), first match wins.
_BY_NAME = (("encode_answer", "write"), ("refusal_answer", "write"), ("answer_head", "write"),
            ("_send", "write"), ("request_id", "parse"))
_BY_FILE = (
    ("bench/split.py", "harness"), ("gateway/http/front.py", "parse"),
    ("gateway/http/headers.py", "parse"), ("multidict", "parse"),
    ("gateway/pipeline.py", "decide"), ("gateway/auth/", "decide"),
    ("gateway/routing.py", "decide"), ("gateway/pathnorm.py", "decide"),
    ("gateway/http/forward_auth.py", "decide"), ("_cookie_helpers", "decide"),
    ("gateway/http/fast_door.py", "decide"),
    ("gateway/http/answer_head.py", "write"), ("gateway/http/raw_head.py", "write"),
    ("gateway/http/lean_head.py", "relay"), ("gateway/reasons.py", "decide"),
    ("gateway/cors.py", "decide"),
    ("gateway/http/upstream.py", "relay"), ("gateway/http/fast_proxy.py", "relay"),
    ("gateway/http/fast_relay.py", "relay"), ("gateway/http/deadlines.py", "relay"),
    ("gateway/http/proxy.py", "relay"), ("gateway/http/hop.py", "relay"),
    ("gateway/http/observe.py", "observe"), ("gateway/metrics.py", "observe"),
    ("prometheus_client", "observe"), ("gateway/logs.py", "observe"), ("logging", "observe"),
)


def _stage(key: tuple[str, int, str]) -> str | None:
    """The stage of a Python function, None for a C function (its callers decide)."""
    filename, _, name = key
    if filename == "~":
        return None
    for fragment, stage in _BY_NAME:
        if name == fragment and "gateway/" in filename:
            return stage
    for fragment, stage in _BY_FILE:
        if fragment in filename:
            return stage
    return "other"


def split(profile: cProfile.Profile) -> dict[str, float]:
    """Own time per stage, in seconds (C functions charged to their callers' stages)."""
    stats: Any = cast(Any, pstats.Stats(profile)).stats  # {key: (cc, nc, tt, ct, callers)}
    totals: dict[str, float] = defaultdict(float)
    for key, (_, _, own, _, callers) in stats.items():
        stage = _stage(key)
        if stage is not None:
            totals[stage] += own
            continue
        shares = {caller: values[2] for caller, values in callers.items()}
        whole = sum(shares.values())
        for caller, part in shares.items():
            caller_stage = _stage(caller) or "other"
            totals[caller_stage] += own * (part / whole if whole else 1 / len(shares))
    totals.pop("harness", None)
    return dict(totals)


class _Upstream(asyncio.Protocol):
    """A minimal keep-alive upstream: one fixed answer per request head."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(_RESPONSE)


class _Client(asyncio.Protocol):
    """A keep-alive client: the next request as soon as an answer is whole."""

    def __init__(self, request: bytes, counter: list[int], done: asyncio.Future[None],
                 limit: list[int]) -> None:
        self.request = request
        self.counter = counter
        self.done = done
        self.limit = limit
        self.buffer = b""
        self.idle = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = cast(Any, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.counter[0] += 1
            if self.counter[0] >= self.limit[0]:
                self.idle = True  # no request in flight: the next phase starts it
                if not self.done.done():
                    self.done.set_result(None)
                return
            self.transport.write(self.request)


async def _measure(mode: str, requests: int, connections: int) -> dict[str, Any]:
    key = SigningKey(kid="ins_bench")
    token = DevIssuer(ISSUER, key).token(org_id="org_2bench", role="admin", lifetime=3600)
    loop = asyncio.get_running_loop()
    env = {"CLERK_JWT_KEY": key.public_pem(), "CLERK_ISSUER": ISSUER,
           "GATEWAY_LOG_LEVEL": "WARNING"}
    upstream = None
    if mode == "proxy":
        upstream = await loop.create_server(_Upstream, "127.0.0.1", 0)
        env["GATEWAY_UPSTREAM"] = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    gateway = Gateway(load_settings(env))
    runner = public_runner(gateway)
    await runner.setup()
    server = await loop.create_server(runner.server, "127.0.0.1", 0)  # type: ignore[arg-type]
    port = server.sockets[0].getsockname()[1]
    request = (f"GET /api/hello HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n"
               ).encode()
    counter, limit = [0], [max(500, requests // 10)]
    done: asyncio.Future[None] = loop.create_future()
    clients = [await loop.create_connection(
        lambda: _Client(request, counter, done, limit), "127.0.0.1", port)
        for _ in range(connections)]
    await done  # warm-up: keys, caches, pooled upstream connections
    while not all(client.idle for _, client in clients):  # never two requests in flight
        await asyncio.sleep(0.01)
    counter[0], limit[0] = 0, requests
    done = loop.create_future()
    for _, client in clients:
        client.done, client.idle = done, False
        client.transport.write(request)
    profile = cProfile.Profile()
    started = time.process_time()
    profile.enable()
    await done
    profile.disable()
    cpu = time.process_time() - started
    for transport, _ in clients:
        transport.close()
    server.close()
    await runner.cleanup()
    if upstream is not None:
        upstream.close()
    seconds = split(profile)
    total = sum(seconds.values())
    return {
        "mode": mode, "loop": loop_name(loop), "requests": counter[0],
        "connections": connections,
        "profiled_cpu_us_per_request": cpu / max(1, counter[0]) * 1e6,
        "gateway_us_per_request": {s: seconds.get(s, 0.0) / max(1, counter[0]) * 1e6
                                   for s in STAGES},
        "share": {s: seconds.get(s, 0.0) / total if total else 0.0 for s in STAGES},
    }


def main(argv: list[str] | None = None) -> int:
    """Measure one mode and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.split")
    parser.add_argument("mode", choices=("proxy", "forward_auth"))
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--loop", default="uvloop", choices=("auto", "uvloop", "asyncio"))
    args = parser.parse_args(argv)
    result = run(_measure(args.mode, args.requests, args.connections), args.loop)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
