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
_WELL_FORMED = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def request_id(headers: CIMultiDictProxy[str]) -> str:
    """The client's X-Request-Id when well-formed, else a new random one."""
    given = headers.get(REQUEST_ID)
    if given is not None and _WELL_FORMED.match(given):
        return given
    return new_request_id()


def new_request_id() -> str:
    """A fresh random request id: 32 hex digits (as uuid4().hex, at a third of the cost)."""
    return os.urandom(16).hex()
