"""`GET /_gateway/jwks.json`: the public keys upstreams verify the gateway's assertions with."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from gateway.auth.signing_keys import published_keys
from gateway.http.errors import error_response
from gateway.http.headers import request_id
from gateway.reasons import Reason

if TYPE_CHECKING:
    from gateway.auth.assertion import AssertionSigner

__all__ = ["JWKS_MAX_AGE_SECONDS", "JWKS_PATH", "JwksEndpoint"]

JWKS_PATH = "/_gateway/jwks.json"
JWKS_MAX_AGE_SECONDS = 300
_RENDER_SECONDS = 5.0  # the published set is re-read from the state directory at most this often


class JwksEndpoint:
    """Serves the current and not-yet-retired public keys, cacheable by clients."""

    def __init__(self, signer: Callable[[], AssertionSigner | None], state_dir: Callable[[], str],
                 clock: Callable[[], float] = time.time) -> None:
        self._signer = signer
        self._state_dir = state_dir
        self._clock = clock
        self._rendered: tuple[str, float, bytes] | None = None

    def document(self) -> bytes | None:
        """The JWKS document (None when assertions are off), re-read every few seconds."""
        signer = self._signer()
        if signer is None:
            return None
        now = self._clock()
        rendered = self._rendered
        if rendered is not None and rendered[0] == signer.key.kid and now < rendered[1]:
            return rendered[2]
        keys = published_keys(self._state_dir(), signer.key, self._clock)
        body = json.dumps({"keys": keys}, separators=(",", ":")).encode()
        self._rendered = (signer.key.kid, now + _RENDER_SECONDS, body)
        return body

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET or HEAD: the key set; 404 when assertions are off; 405 for other methods."""
        rid = request_id(request.headers)
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            response = error_response(Reason.UNSUPPORTED_METHOD, rid, realm="")
            response.headers[hdrs.ALLOW] = "GET, HEAD"
            return response
        body = self.document()
        if body is None:
            return error_response(Reason.NOT_FOUND, rid, realm="")
        return web.Response(body=body, content_type="application/jwk-set+json", headers={
            hdrs.CACHE_CONTROL: f"public, max-age={JWKS_MAX_AGE_SECONDS}",
            "X-Request-Id": rid,
        })
