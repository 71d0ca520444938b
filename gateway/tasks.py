"""Stopping background tasks for certain.

`task.cancel()` followed by `await task` can wait forever: a cancellation can be swallowed
on its way (Python 3.11's `asyncio.wait_for` returns the inner result instead of raising when
both land in the same step), and a loop task that swallowed one simply goes round again.
`stop_task` cancels again until the task ends, within a bound, and says so if it never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

__all__ = ["STOP_GRACE_SECONDS", "stop_task"]

log = logging.getLogger("gateway.tasks")

STOP_GRACE_SECONDS = 5.0
_RECANCEL_SECONDS = 0.1


async def stop_task(task: asyncio.Task[Any] | None, grace: float = STOP_GRACE_SECONDS) -> None:
    """Cancel `task` until it has ended (at most `grace` seconds); its result is dropped."""
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            log.warning("background task ignored cancellation; leaving it",
                        extra={"task": task.get_name()})
            return
        task.cancel()
        await asyncio.wait((task,), timeout=min(_RECANCEL_SECONDS, left))
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()  # retrieved: a failure it ended with was already logged by it
