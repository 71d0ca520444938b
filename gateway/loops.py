"""The event loop a process runs on: uvloop where installed (`event_loop: auto`), else asyncio."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "EVENT_LOOPS", "loop_factory", "loop_name", "loop_problem", "resolve_loop", "run",
    "uvloop_available",
]

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def uvloop_available() -> bool:
    """True when uvloop can be imported here."""
    return importlib.util.find_spec("uvloop") is not None


def loop_problem(choice: str) -> str | None:
    """Why a setting cannot name a loop here (unknown, or uvloop not installed), else None."""
    if choice not in EVENT_LOOPS:
        return f"{choice!r} must be one of {', '.join(EVENT_LOOPS)}"
    if choice == "uvloop" and not uvloop_available():
        return "uvloop is not installed (pip install uvloop, or use auto)"
    return None


def resolve_loop(choice: str) -> str:
    """The loop a setting names: `auto` is uvloop when installed, else asyncio."""
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    return choice


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of the kind the setting names."""
    if resolve_loop(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio`: what a running loop is, for the start log line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """asyncio.run on the loop the setting names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
