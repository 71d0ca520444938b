"""The CORS headers of the sidecar proxy's responses (the policy itself is gateway/cors.py)."""

from __future__ import annotations

from aiohttp import hdrs, web

from gateway.http.headers import DECISION
from gateway.pipeline import Authorizer
from gateway.reasons import Reason

__all__ = ["CorsResponses"]

_ACCESS_CONTROL = "access-control-"


class CorsResponses:
    """Adds the CORS headers to every proxied or refused response to an allowed origin.

    The gateway owns CORS when it is enabled: the upstream's own `Access-Control-*` headers are
    removed (two `Access-Control-Allow-Origin` values fail in every browser), and a disallowed
    origin gets none at all. Preflights are answered by the proxy with `preflight_headers`.
    """

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer  # its policy is swapped on reload

    async def on_response_prepare(self, request: web.Request,
                                  response: web.StreamResponse) -> None:
        """aiohttp's signal, sent before any response's headers are written."""
        policy = self._authorizer.cors
        decision = request.get(DECISION)
        if policy is None or not policy.enabled or decision is None:
            return  # CORS left to the upstream, or not a decided request
        if decision.reason is Reason.PREFLIGHT:
            return  # answered with its preflight headers already
        headers = response.headers
        for name in [n for n in headers if n.lower().startswith(_ACCESS_CONTROL)]:
            del headers[name]
        added = policy.response_headers(policy.reader_origin(request.method, request.headers),
                                        decision.route.name)
        for name, value in added:
            if name == hdrs.VARY and hdrs.VARY in headers:
                value = f"{headers[hdrs.VARY]}, {value}"
            headers[name] = value
