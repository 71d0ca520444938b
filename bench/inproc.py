"""Cost per request of one mode, in process: `python -m bench.inproc MODE`.

The harness of bench/split.py (the gateway's listener as `serve` builds it, a minimal
upstream, keep-alive clients, all in this process) without a profiler: CPU microseconds per
request, and, under callgrind, instructions per request of the measured phase alone:

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \\
        python -m bench.inproc proxy --requests 5000

The measured phase runs inside one `functools.reduce` call, a C function callgrind can
switch collection on and off with; `callgrind_annotate` gives the total, to divide by the
requests printed. `--direct` measures the harness alone (the clients talking to the upstream),
to subtract. Instruction counts do not move with the machine's noise, so they compare two
builds exactly where wall-clock runs on a shared VM cannot; they overweight C code that
relies on CPU features valgrind hides (SHA extensions, wide vector loops), such as hashing
the token or `bytes.translate` over it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
from typing import Any

from bench.split import Harness
from gateway.loops import loop_factory, loop_name

__all__ = ["main"]


def measure(mode: str, requests: int, connections: int, loop_kind: str,
            direct: bool = False, varied: bool = False) -> dict[str, Any]:
    """Open the harness, then run `requests` requests inside one functools.reduce call
    (`varied`: a new path, and upstream answer, for every request)."""
    loop = loop_factory(loop_kind)()
    asyncio.set_event_loop(loop)
    try:
        harness = Harness(mode, connections, varied)
        loop.run_until_complete(harness.open(direct))
        answered: list[int] = []
        started = time.process_time()
        # reduce() over two items calls its function once: the phase callgrind counts.
        functools.reduce(
            lambda _, __: answered.append(loop.run_until_complete(harness.run(requests))),
            [None, None])
        cpu = time.process_time() - started
        loop.run_until_complete(harness.close())
        return {"mode": "direct" if direct else mode, "loop": loop_name(loop),
                "connections": connections, "requests": answered[0],
                "not_200": harness.refused,
                "cpu_us_per_request": cpu / max(1, answered[0]) * 1e6}
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def main(argv: list[str] | None = None) -> int:
    """Measure one mode and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.inproc")
    parser.add_argument("mode", choices=("proxy", "forward_auth"))
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    parser.add_argument("--direct", action="store_true",
                        help="the clients talk to the upstream itself: the harness's own cost")
    parser.add_argument("--varied", action="store_true",
                        help="a new path (and upstream answer) for every request: no head "
                             "ever comes twice")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.mode, args.requests, args.connections, args.loop,
                             args.direct, args.varied)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
