"""The CORS headers of the sidecar proxy's responses (the policy itself is gateway/cors.py)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import hdrs, web
from multidict import CIMultiDict

from gateway.cors import CorsPolicy
from gateway.http.headers import DECISION
from gateway.pipeline import Authorizer, Decision
from gateway.reasons import Reason

__all__ = ["CorsResponses", "add_cors_headers"]

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
        add_cors_headers(self._authorizer.cors, request.get(DECISION), request.method,
                         request.headers, response.headers)


def add_cors_headers(policy: CorsPolicy | None, decision: Decision | None, method: str,
                     request_headers: Mapping[str, str], headers: CIMultiDict[str]) -> None:
    """Make a decided request's response headers carry the gateway's CORS headers (both proxy
    doors): the upstream's `Access-Control-*` out, the policy's in for an allowed origin."""
    if policy is None or not policy.enabled or decision is None:
        return  # CORS left to the upstream, or not a decided request
    if decision.reason is Reason.PREFLIGHT:
        return  # answered with its preflight headers already
    for name in [n for n in headers if n.lower().startswith(_ACCESS_CONTROL)]:
        del headers[name]
    added = policy.response_headers(policy.reader_origin(method, request_headers),
                                    decision.route.name)
    for name, value in added:
        if name == hdrs.VARY and hdrs.VARY in headers:
            value = f"{headers[hdrs.VARY]}, {value}"
        headers[name] = value
