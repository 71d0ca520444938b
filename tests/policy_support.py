"""Doors for the route-policy decision table, token profiles, and a raw HTTP/1.1 client.

A door sends one request (method, raw request target, token, host) through one way into
the gateway and reports the Outcome. The same table runs through every door, so a rule
written once is shown to hold for all of them. The real reverse proxy (ProxyDoor) sends the
request line byte for byte to a proxy-mode gateway in front of a RecordingUpstream and fills
`Outcome.upstream_path` with the path the upstream received (None when it was not reached).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.devissuer import DevIssuer
from gateway.pipeline import Authorizer, RequestFacts


@dataclass
class Outcome:
    """What a door saw: status, reason label (when the gateway said), headers, upstream."""

    status: int
    reason: str | None
    headers: Mapping[str, str] = field(default_factory=dict)
    upstream_path: str | None = None


class Door(Protocol):
    """One way into the gateway."""

    name: str

    async def send(self, method: str, target: str, token: str | None,
                   host: str | None) -> Outcome:
        """Send one request and report what came back."""


def _reason(status: int, body: bytes) -> str | None:
    if status == 200 or not body:
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document.get("reason") if isinstance(document, dict) else None


class ForwardAuthDoor:
    """Traefik/Caddy style: the original request travels in X-Forwarded-* headers."""

    name = "forward_auth"

    def __init__(self, client: TestClient[Any, Any], nginx: bool = False) -> None:
        self.client = client
        self.nginx = nginx
        if nginx:
            self.name = "forward_auth_nginx"

    async def send(self, method: str, target: str, token: str | None,
                   host: str | None) -> Outcome:
        """GET the auth endpoint with the original method, URI and host as headers."""
        if self.nginx:
            headers = {"X-Original-Method": method, "X-Original-URI": target}
        else:
            headers = {"X-Forwarded-Method": method, "X-Forwarded-Uri": target}
        if host is not None:
            headers["X-Forwarded-Host"] = host
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.client.get("/", headers=headers, allow_redirects=False)
        body = await response.read()
        return Outcome(response.status, _reason(response.status, body), dict(response.headers))


async def raw_request(host: str, port: int, method: str, target: str,
                      headers: Mapping[str, str], timeout: float = 10.0) -> tuple[int, dict[
                          str, str], bytes]:
    """Send one HTTP/1.1 request with the target exactly as given (no client normalising)."""
    async def exchange() -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            lines = [f"{method} {target} HTTP/1.1", "Connection: close", "Content-Length: 0"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            parsed[name.strip()] = value.strip()
        return int(status_line.split()[1]), parsed, body

    return await asyncio.wait_for(exchange(), timeout)


class RawTargetDoor:
    """Envoy ext_authz style: the original method and request target arrive as they are."""

    name = "envoy_raw"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def send(self, method: str, target: str, token: str | None,
                   host: str | None) -> Outcome:
        """Send the request line byte for byte."""
        headers = {"Host": host or "gateway.test"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        status, response_headers, body = await raw_request(
            self.host, self.port, method, target, headers)
        return Outcome(status, _reason(status, body), response_headers)


class RecordingUpstream:
    """An upstream that answers 200 and records each request's path and headers by request id."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, dict[str, str]]] = {}

    def app(self) -> web.Application:
        """Every method on every path."""
        app = web.Application()
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._record)
        return app

    async def _record(self, request: web.Request) -> web.Response:
        path = request.raw_path.partition("?")[0]
        self.seen[request.headers.get("X-Request-Id", "")] = (path, dict(request.headers))
        return web.Response(text="upstream")


class ProxyDoor:
    """The sidecar proxy: the request line as sent, to a proxy-mode gateway and its upstream.

    `Outcome.headers` are the headers the upstream received when the request reached it (that
    is where the proxy puts identity headers), else the gateway's response headers.
    """

    name = "proxy"

    def __init__(self, host: str, port: int, upstream: RecordingUpstream,
                 name: str = "proxy") -> None:
        self.host = host
        self.port = port
        self.upstream = upstream
        self.name = name  # "proxy_fast": the same gateway served by the proxy's fast door
        self._ids = itertools.count(1)

    async def send(self, method: str, target: str, token: str | None,
                   host: str | None) -> Outcome:
        """Send the request; the request id tells which upstream record is this request's."""
        rid = f"policy-table-{next(self._ids):08d}"
        headers = {"Host": host or "gateway.test", "X-Request-Id": rid}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        status, response_headers, body = await raw_request(
            self.host, self.port, method, target, headers)
        reason = _reason(status, body)
        seen = self.upstream.seen.pop(rid, None)
        if seen is None:
            return Outcome(status, reason, response_headers)
        path, upstream_headers = seen
        return Outcome(status, reason, upstream_headers, upstream_path=path)


class AuthorizerDoor:
    """Stand-in for the reverse proxy: the pipeline called with door="proxy"."""

    name = "proxy_pipeline"

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def send(self, method: str, target: str, token: str | None,
                   host: str | None) -> Outcome:
        """Decide directly; an allowed decision 'reaches' the upstream at Decision.path."""
        headers: CIMultiDict[str] = CIMultiDict()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        facts = RequestFacts(door="proxy", method=method, uri=target, host=host,
                             headers=CIMultiDictProxy(headers))
        decision = await self.authorizer.authorize(facts)
        return Outcome(
            decision.reason.status, decision.reason.label, dict(decision.headers),
            upstream_path=decision.path if decision.allowed else None,
        )


def _v2_permission_claims(permissions: tuple[str, ...], features: tuple[str, ...]) -> dict[
        str, str]:
    """Clerk v2 fea/per/fpm claims that decode to the given org permissions."""
    org_features = [f.split(":", 1)[1] for f in features if f.startswith("o:")]
    for permission in permissions:
        feature = permission.split(":")[1]
        if feature not in org_features:
            org_features.append(feature)
    names = list(dict.fromkeys(p.split(":")[2] for p in permissions))
    masks = []
    for feature in org_features:
        mask = 0
        for j, name in enumerate(names):
            if f"org:{feature}:{name}" in permissions:
                mask |= 1 << j
        masks.append(str(mask))
    fea = [f for f in features if not f.startswith("o:")] + [f"o:{f}" for f in org_features]
    return {"features": ",".join(fea), "org_permissions_v2": ",".join(names),
            "fpm": ",".join(masks)}


@dataclass(frozen=True)
class Profile:
    """Who a test token speaks for."""

    sub: str = "user_plain"
    org_id: str | None = None
    role: str | None = None
    permissions: tuple[str, ...] = ()
    plan: str | None = None
    features: tuple[str, ...] = ()
    expired: bool = False


def mint(issuer: DevIssuer, profile: Profile, version: int, lifetime: int = 900) -> str:
    """A Clerk v1 or v2 token for a profile (v2 permissions encoded as fea/per/fpm)."""
    kwargs: dict[str, Any] = {"version": version, "sub": profile.sub,
                              "lifetime": -120 if profile.expired else lifetime}
    if profile.org_id:
        kwargs.update(org_id=profile.org_id, org_slug=profile.org_id.replace("_", "-"),
                      role=profile.role or "member")
    if version == 1:
        kwargs["permissions"] = profile.permissions
        if profile.plan:
            kwargs["pla"] = profile.plan
        if profile.features:
            kwargs["fea"] = ",".join(profile.features)
    else:
        kwargs["plan"] = profile.plan
        if profile.org_id and (profile.permissions or profile.features):
            kwargs.update(_v2_permission_claims(profile.permissions, profile.features))
        elif profile.features:
            kwargs["features"] = ",".join(profile.features)
    return issuer.token(**kwargs)
