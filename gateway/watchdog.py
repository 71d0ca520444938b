"""The shutdown watchdog: a stop that overruns its drain is reported, then the process exits.

A graceful stop is bounded by `shutdown_timeout_seconds` (requests in flight) plus a short
grace for closing stores and clients. Should anything still hold the process after that (a
task that ignores cancellation, a thread that never returns), the watchdog logs what is still
running (every asyncio task's stack and every thread's) and exits with
`SHUTDOWN_OVERRAN_EXIT`, so a supervisor or orchestrator never waits on a wedged process and
the log says why. It runs on its own daemon thread: it fires even when the event loop is stuck.
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
import logging
import os
import sys
import threading
import traceback

__all__ = ["SHUTDOWN_GRACE_SECONDS", "SHUTDOWN_OVERRAN_EXIT", "arm_shutdown_watchdog"]

log = logging.getLogger("gateway.shutdown")

SHUTDOWN_GRACE_SECONDS = 5.0  # after the drain: closing stores, key refreshers, clients
SHUTDOWN_OVERRAN_EXIT = 70  # EX_SOFTWARE: the process did not stop as it should


def _task_stacks(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Each pending task and where it waits (best effort: read from another thread)."""
    stacks = []
    try:
        tasks = list(asyncio.all_tasks(loop))
    except RuntimeError:  # the set changed while copied: one retry is enough for a report
        tasks = list(asyncio.all_tasks(loop))
    for task in tasks:
        out = io.StringIO()
        task.print_stack(limit=8, file=out)
        stacks.append(out.getvalue())
    return stacks


def _overran(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """Report what still runs, then exit at once."""
    try:
        log.error("shutdown did not finish in time; exiting", extra={
            "seconds": seconds, "pending_tasks": _task_stacks(loop)})
        for handler in logging.getLogger().handlers:
            handler.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except Exception:  # the report is best effort; the exit is not
        traceback.print_exc()
    finally:
        os._exit(SHUTDOWN_OVERRAN_EXIT)


def arm_shutdown_watchdog(loop: asyncio.AbstractEventLoop, seconds: float) -> threading.Timer:
    """Exit with a report unless the process has ended `seconds` from now."""
    timer = threading.Timer(seconds, _overran, args=(loop, seconds))
    timer.name = "shutdown-watchdog"
    timer.daemon = True
    timer.start()
    return timer
