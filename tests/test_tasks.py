"""Background tasks stop for certain: a swallowed cancellation is cancelled again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.tasks import stop_task


async def test_a_task_that_swallows_cancellations_is_cancelled_until_it_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 3:
                    raise

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.cancelled()
    assert swallowed == 3


async def test_a_task_that_never_ends_is_left_after_the_grace_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.get_running_loop().create_task(deaf(), name="deaf-task")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="gateway.tasks"):
        await stop_task(task, grace=0.3)
    assert not task.done()
    assert any(getattr(r, "task", None) == "deaf-task" for r in caplog.records)
    release.set()
    task.cancel()
    await asyncio.wait((task,), timeout=5)
    assert task.done()


async def test_the_caller_s_own_cancellation_is_not_swallowed() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.get_running_loop().create_task(stubborn())
    stopper = asyncio.get_running_loop().create_task(stop_task(task, grace=30))
    await asyncio.sleep(0.05)
    stopper.cancel()  # whoever is stopping the task is itself cancelled: that must hold
    with pytest.raises(asyncio.CancelledError):
        await stopper
    release.set()
    task.cancel()
    await asyncio.wait((task,), timeout=5)
    assert task.done()


async def test_a_task_that_failed_is_stopped_without_raising() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.get_running_loop().create_task(broken())
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.done() and not task.cancelled()
    await stop_task(None)  # nothing to stop
