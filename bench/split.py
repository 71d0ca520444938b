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
from collections.abc import Callable
from typing import Any, cast

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.devissuer import DevIssuer, SigningKey
from gateway.loops import loop_name, run
from gateway.server import public_runner

__all__ = ["Harness", "main"]

ISSUER = "https://bench.clerk.accounts.dev"
_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
             b'\r\n{"ok":true}')
_OK = b"HTTP/1.1 200 OK"
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
    """A minimal keep-alive upstream: one fixed answer per request head (`varied`: a head
    and a body of each request's own, as bench/run.py's static upstream under /api/varied/)."""

    def __init__(self, varied: bool = False) -> None:
        self.varied = varied
        self.answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            if not self.varied:
                self.transport.write(_RESPONSE)
                continue
            self.answered += 1
            body = b'{"n":%d}' % self.answered
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"X-N: %d\r\nContent-Length: %d\r\n\r\n%s"
                                 % (self.answered, len(body), body))


class _Client(asyncio.Protocol):
    """A keep-alive client: the next request as soon as an answer is whole."""

    def __init__(self, request: Callable[[], bytes], counter: list[int],
                 done: asyncio.Future[None], limit: list[int]) -> None:
        self.request = request  # the next request's bytes
        self.counter = counter
        self.done = done
        self.limit = limit
        self.buffer = b""
        self.idle = False
        self.refused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = cast(Any, transport)
        self.transport.write(self.request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            length = 0
            lines = head.split(b"\r\n")
            for line in lines:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(rest) < length:
                return
            if lines[0] != _OK:
                self.refused += 1  # every measured request must be answered 200
            self.buffer = rest[length:]
            self.counter[0] += 1
            if self.counter[0] >= self.limit[0]:
                self.idle = True  # no request in flight: the next phase starts it
                if not self.done.done():
                    self.done.set_result(None)
                return
            self.transport.write(self.request())


class Harness:
    """The gateway's listener as `serve` builds it, a minimal upstream (proxy mode) and
    keep-alive clients, in this process; warmed up, no request in flight between phases."""

    def __init__(self, mode: str, connections: int, varied: bool = False) -> None:
        self.mode = mode
        self.connections = connections
        self.varied = varied  # a new path (and upstream answer) for every request
        self._sent = 0
        self._closers: list[Any] = []
        self._clients: list[tuple[Any, _Client]] = []
        self._counter = [0]
        self._limit = [0]
        self._request = b""

    async def open(self, direct: bool = False, warmup: int = 500) -> None:
        """Start it all and warm up with `warmup` requests (keys, caches, pooled upstream
        connections); `direct`: the clients talk to the upstream itself (the harness's own
        cost, to subtract)."""
        key = SigningKey(kid="ins_bench")
        token = DevIssuer(ISSUER, key).token(org_id="org_2bench", role="admin", lifetime=3600)
        loop = asyncio.get_running_loop()
        env = {"CLERK_JWT_KEY": key.public_pem(), "CLERK_ISSUER": ISSUER,
               "GATEWAY_LOG_LEVEL": "WARNING"}
        if self.mode == "proxy" or direct:
            upstream = await loop.create_server(lambda: _Upstream(self.varied), "127.0.0.1", 0)
            self._closers.append(upstream.close)
            upstream_port = upstream.sockets[0].getsockname()[1]
            env["GATEWAY_UPSTREAM"] = f"http://127.0.0.1:{upstream_port}"
        if direct:
            port = upstream_port
        else:
            runner = public_runner(Gateway(load_settings(env)))
            await runner.setup()
            server = await loop.create_server(runner.server, "127.0.0.1", 0)  # type: ignore[arg-type]
            self._closers += [runner.cleanup, server.close]
            port = server.sockets[0].getsockname()[1]
        self._request = (f"GET /api/hello HTTP/1.1\r\nHost: bench\r\n"
                         f"Authorization: Bearer {token}\r\n\r\n").encode()
        self._varied = (b" HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer " + token.encode()
                        + b"\r\n\r\n")  # after `GET /api/varied/<n>`
        self._limit[0] = warmup
        done: asyncio.Future[None] = loop.create_future()
        for _ in range(self.connections):
            self._clients.append(await loop.create_connection(
                lambda: _Client(self._next_request, self._counter, done, self._limit),
                "127.0.0.1", port))
        await done
        await self.settle()

    async def settle(self) -> None:
        """Wait until no request is in flight (before each measured run)."""
        while not all(client.idle for _, client in self._clients):
            await asyncio.sleep(0.01)

    async def run(self, requests: int) -> int:
        """Send about `requests` requests over the connections (settled); the number
        answered when the last was counted."""
        self._counter[0], self._limit[0] = 0, requests
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for _, client in self._clients:
            client.done, client.idle = done, False
            client.transport.write(self._next_request())
        await done
        return self._counter[0]  # (the last requests in flight are answered after this)

    def _next_request(self) -> bytes:
        """The same request again, or (varied) one with a path of its own."""
        if not self.varied:
            return self._request
        self._sent += 1
        return b"GET /api/varied/%d%s" % (self._sent, self._varied)

    @property
    def refused(self) -> int:
        """Answers other than 200 since the harness opened (a broken setup, not a cost)."""
        return sum(client.refused for _, client in self._clients)

    async def close(self) -> None:
        """Close the clients, the listener and the upstream."""
        for transport, _ in self._clients:
            transport.close()
        for close in reversed(self._closers):
            result = close()
            if asyncio.iscoroutine(result):
                await result


async def _measure(mode: str, requests: int, connections: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    harness = Harness(mode, connections)
    await harness.open(warmup=max(500, requests // 10))
    profile = cProfile.Profile()
    started = time.process_time()
    profile.enable()
    answered = await harness.run(requests)
    profile.disable()
    cpu = time.process_time() - started
    await harness.close()
    seconds = split(profile)
    total = sum(seconds.values())
    return {
        "mode": mode, "loop": loop_name(loop), "requests": answered,
        "connections": connections, "not_200": harness.refused,
        "profiled_cpu_us_per_request": cpu / max(1, answered) * 1e6,
        "gateway_us_per_request": {s: seconds.get(s, 0.0) / max(1, answered) * 1e6
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
