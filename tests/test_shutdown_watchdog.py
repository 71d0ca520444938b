"""A stop that overruns its deadline is reported (tasks and threads) and the process exits 70."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.watchdog import SHUTDOWN_OVERRAN_EXIT

ROOT = Path(__file__).resolve().parent.parent

WEDGED = textwrap.dedent("""
    import asyncio, threading
    from gateway.logs import setup_logging
    from gateway.watchdog import arm_shutdown_watchdog

    async def wedged_cleanup_step() -> None:
        while True:  # a close that swallows cancellation and never returns
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        setup_logging("INFO", "json")
        task = loop.create_task(wedged_cleanup_step())
        arm_shutdown_watchdog(loop, {seconds})
        {wedge}

    asyncio.run(main())
""")


def _run(wedge: str, seconds: float = 0.5) -> subprocess.CompletedProcess[str]:
    program = WEDGED.format(seconds=seconds, wedge=wedge)
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_a_task_that_never_finishes_is_named_and_the_process_exits_70() -> None:
    result = _run("await task")
    assert result.returncode == SHUTDOWN_OVERRAN_EXIT
    output = result.stdout + result.stderr
    assert "shutdown did not finish in time" in output
    assert "wedged_cleanup_step" in output  # the pending task, with where it waits


def test_a_blocked_event_loop_cannot_stop_the_watchdog() -> None:
    result = _run("threading.Event().wait()")  # the loop's own thread never comes back
    assert result.returncode == SHUTDOWN_OVERRAN_EXIT
    output = result.stdout + result.stderr
    assert "shutdown did not finish in time" in output
    assert "Thread" in output and "in main" in output  # every thread's stack, the loop's too


def test_a_process_that_ends_in_time_is_left_alone() -> None:
    result = _run("task.cancel()", seconds=30)
    assert result.returncode == 0, result.stderr
    assert "shutdown did not finish" not in result.stdout + result.stderr
