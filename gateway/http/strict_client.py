"""aiohttp's client connection, strict about responses no request asked for.

aiohttp parses whatever an upstream sends on a pooled keep-alive connection and queues it: a
response that arrives while the connection waits in the pool is read as the answer to the
next request sent on it (a desynchronisation: one user's request gets bytes another request
caused, or bytes the upstream made up, such as a redirect setting a session cookie). This
protocol accepts exactly one final response per request; anything else closes the connection
and is dropped. A 1xx other than 100 is not relayed and the connection is not reused.

The connector also bounds the wait for a free pooled connection. Both hook private parts of
aiohttp's TCPConnector (`_factory`, `_wait_for_available_connection`);
tests/test_upstream_desync.py and tests/test_exhaustion_proxy.py fail if aiohttp changes them.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from gateway.http.upstream import UpstreamBusy

__all__ = ["StrictConnector", "StrictResponseHandler"]


class StrictResponseHandler(ResponseHandler):
    """One final response per request; bytes answering no request close the connection."""

    _awaiting = False

    def set_response_params(self, **kwargs: Any) -> None:
        """A request is about to be sent: its answer is expected from now on."""
        super().set_response_params(**kwargs)
        self._awaiting = True

    def data_received(self, data: bytes) -> None:
        """Bytes while no request waits and no body is being read are never parsed."""
        payload = self._payload
        if (data and not self._awaiting and (payload is None or payload.is_eof())
                and self._payload_parser is None and not self._upgraded):
            self._refuse()
            return
        super().data_received(data)

    def feed_data(self, data: Any, size: int = 0) -> None:
        """Queue the awaited response; drop (and close on) any other."""
        if not self._awaiting:
            self._refuse()
            return
        code = data[0].code
        if 100 <= code < 200 and code != 101:
            if code != 100:
                self.force_close()
        else:
            self._awaiting = False
        super().feed_data(data, size)

    def _refuse(self) -> None:
        self.force_close()
        transport = self.transport
        if transport is not None:
            transport.close()


class StrictConnector(aiohttp.TCPConnector):
    """A TCPConnector whose connections use StrictResponseHandler and whose wait for a free
    connection is bounded (UpstreamBusy after `pool_timeout` seconds; 0: unbounded)."""

    def __init__(self, *, pool_timeout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool_timeout = pool_timeout
        self._factory = functools.partial(  # type: ignore[assignment]
            StrictResponseHandler, loop=asyncio.get_running_loop())

    async def _wait_for_available_connection(self, key: Any, traces: Any) -> None:
        if not self._pool_timeout:
            await super()._wait_for_available_connection(key, traces)
            return
        try:
            async with asyncio.timeout(self._pool_timeout):
                await super()._wait_for_available_connection(key, traces)
        except TimeoutError:
            raise UpstreamBusy("no upstream connection became free in time") from None
