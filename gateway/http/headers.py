"""Request ids and the names of headers the gateway controls."""

from __future__ import annotations

import os
import re

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.pipeline import Decision

__all__ = ["DECISION", "REQUEST_ID", "REQUEST_ID_KEY", "new_request_id", "request_id"]

DECISION = web.RequestKey("decision", Decision)
REQUEST_ID_KEY = web.RequestKey("request_id", str)

REQUEST_ID = "X-Request-Id"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{8,128}")  # the whole value (fullmatch)


def request_id(headers: CIMultiDictProxy[str]) -> str:
    """The client's X-Request-Id when well-formed, else a new random one."""
    given = headers.get(REQUEST_ID)
    if given is not None and _WELL_FORMED.fullmatch(given):
        return given
    return new_request_id()


def new_request_id() -> str:
    """A fresh random request id: 32 hex digits from the OS's CSPRNG (as uuid4().hex)."""
    return _IDS.next()


class _RandomIds:
    """Request ids cut from one read of `os.urandom` for many: one getrandom system call
    per 256 ids instead of one per request (the event loop's thread draws them)."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = ""
        self._at = 0

    def next(self) -> str:
        """The next 16 random bytes, as hex (the pool is kept as hex: one slice per id)."""
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(16 * _IDS_PER_READ).hex(), 0
        self._at = at + 32
        return self._pool[at:at + 32]

    def forget(self) -> None:
        """Drop the unused bytes (a forked child must never hand out its parent's)."""
        self._pool, self._at = "", 0


_IDS_PER_READ = 256
_IDS = _RandomIds()
os.register_at_fork(after_in_child=_IDS.forget)
