"""No configured secret ever reaches a log line: hostile Backend API answers, masked lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.devissuer import DevIssuer
from gateway.logs import BatchedStreamHandler, JsonFormatter, TextFormatter, protect_secrets
from gateway.redaction import describe_error
from tests.conftest import GatewayFactory

# Heads aiohttp's client parser cannot read: each makes it raise with the request attached.
UNPARSABLE_HEADS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBroken header line\r\n\r\n",
    b"HTTP/9.9 banana\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # cut short
]


@asynccontextmanager
async def hostile_api(clerk: DevIssuer, head: bytes) -> AsyncIterator[str]:
    """A Backend API on loopback: the fake Clerk's keys, then `head` for every session."""
    keys = json.dumps({"keys": [k.jwk() for k in clerk.keys]}).encode()
    jwks = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(keys), keys))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            writer.write(head if b" /v1/sessions/" in request else jwks)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def rendered(record: logging.LogRecord) -> str:
    """Everything any handler could write for a record: message, extras, traceback."""
    plain = logging.Formatter().format(record)
    return "\n".join([plain, JsonFormatter().format(record), TextFormatter().format(record),
                      repr(vars(record))])


@pytest.mark.parametrize("head", UNPARSABLE_HEADS)
async def test_the_secret_key_never_reaches_the_log_whatever_the_api_answers(
    clerk: DevIssuer, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture,
    head: bytes,
) -> None:
    secret = "sk_test_" + secrets.token_hex(16)
    async with hostile_api(clerk, head) as api:
        gw = await make_gateway(
            env={"CLERK_SECRET_KEY": secret, "CLERK_API_URL": api},
            config={"revocation": {"introspection": True,
                                   "introspection_failure_mode": "fail_closed"}})
        caplog.set_level(logging.DEBUG)
        response = await gw.get("/", clerk.token(sub="user_1", sid="sess_1"))
        assert response.status == 503  # no usable answer: fail closed
        assert (await response.json())["reason"] == "revocation_unavailable"
    failures = [r for r in caplog.records if r.name == "gateway.introspection"]
    assert failures, "the failed call is logged"
    for record in caplog.records:
        assert secret not in rendered(record), record.getMessage()


def test_an_aiohttp_error_is_described_without_its_request() -> None:
    secret = "sk_live_" + secrets.token_hex(16)
    info = aiohttp.RequestInfo(
        url=URL("https://api.clerk.com/v1/sessions/sess_1"), method="GET",
        headers=CIMultiDictProxy(CIMultiDict(Authorization=f"Bearer {secret}")),
        real_url=URL("https://api.clerk.com/v1/sessions/sess_1"))
    exc = aiohttp.ClientResponseError(info, (), status=400, message="Invalid header")
    assert secret in repr(exc)  # the reason describe_error exists
    described = describe_error(exc)
    assert described == "ClientResponseError: 400 Invalid header"
    assert describe_error(ValueError("first line\nsecond")) == "ValueError: first line"


def test_the_log_handler_masks_every_protected_secret_in_every_line() -> None:
    secret = "whsec_" + secrets.token_hex(12)
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    protect_secrets([secret])
    record = logging.makeLogRecord({"name": "aiohttp.client", "msg": "failed: %r",
                                    "args": ({"Authorization": secret},), "levelno": 40})
    record.__dict__["detail"] = f"header={secret}"
    handler.handle(record)
    handler.flush()
    line: dict[str, Any] = json.loads(stream.getvalue())
    assert secret not in stream.getvalue()
    assert "[redacted]" in line["msg"] and line["detail"] == "header=[redacted]"
