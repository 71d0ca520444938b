"""The path the gateway routes on is the path the upstream receives, through every door.

Paths that one more percent-decoding would change (double encoding in every spelling,
escaped separators, overlong and fullwidth forms) are refused with 400 `ambiguous_path`
by both forward-auth doors (fast door and aiohttp door) and by the proxy with both
upstream clients; every accepted path reaches the upstream exactly in its normal form.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway, build_public_app
from gateway.config import ConfigError, load_settings
from gateway.devissuer import DevIssuer
from gateway.pathnorm import AmbiguousPath, normalize_path
from tests.conftest import GatewayFactory, PublicServer
from tests.proxy_support import Upstream
from tests.test_security_requests import guarded, send, status_of

ROUTES = {"routes": [
    {"name": "public", "path_prefix": "/public", "access": "public"},
    {"name": "admin", "path_prefix": "/admin", "require": {"role": "admin"}},
]}
CLIENTS = ("lean", "aiohttp")


@dataclass
class Doors:
    """Forward-auth through both doors, and the proxy with each upstream client."""

    fast: TestClient[Any, Any]
    slow: TestClient[Any, Any]
    proxies: dict[str, int]
    upstream: Upstream


@pytest.fixture
async def doors(clerk: DevIssuer, upstream: Upstream, aiohttp_client: Any, tmp_path: Any
                ) -> AsyncIterator[Doors]:
    """One gateway per door, all with the same routes."""
    def config(name: str, extra: dict[str, Any]) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**ROUTES, **extra}))
        return str(path)

    env = {"CLERK_ISSUER": clerk.issuer}
    fast = await aiohttp_client(PublicServer(Gateway(load_settings(env, config("fast", {})))))
    slow = await aiohttp_client(PublicServer(Gateway(load_settings(
        env, config("slow", {"forward_auth": {"fast_path": False}})))))
    runners, proxies = [], {}
    for client in CLIENTS:
        settings_ = load_settings({**env, "GATEWAY_UPSTREAM": upstream.url},
                                  config(client, {"proxy": {"client": client}}))
        runner, port = await guarded(build_public_app(Gateway(settings_)))
        runners.append(runner)
        proxies[client] = port
    yield Doors(fast, slow, proxies, upstream)
    for runner in runners:
        await runner.cleanup()


def expected(target: str) -> tuple[int, str | None]:
    """The status an anonymous request gets, and the path the upstream must receive."""
    try:
        path = normalize_path(target)
    except AmbiguousPath:
        return 400, None
    if path == "/public" or path.startswith("/public/"):
        return 200, path
    return 401, None


async def check_every_door(doors: Doors, target: str) -> None:
    """Every door answers as the normal form says; the upstream gets exactly that path."""
    status, path = expected(target)
    query = target.partition("?")[2]
    for client in (doors.fast, doors.slow):
        response = await client.get("/", headers={"X-Forwarded-Uri": target})
        assert response.status == status, (target, client)
        if status == 400:
            assert (await response.json())["reason"] == "ambiguous_path"
    for name, port in doors.proxies.items():
        doors.upstream.seen.clear()
        raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        answer = await send(port, raw)
        assert status_of(answer) == status, (target, name, answer[:200])
        if status == 400:
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["reason"] == "ambiguous_path"
        if path is None:
            assert doors.upstream.seen == [], (target, name)
        else:
            (seen,) = doors.upstream.seen
            assert seen.path_qs == (f"{path}?{query}" if query else path), (target, name)


@pytest.mark.parametrize("target", [
    "/public/%25%32%65%25%32%65/admin",  # the example: %252e%252e after one pass
    "/public/%25%32%45%25%32%45/admin",
    "/public/%25%32%66admin", "/public/%25%32%46", "/public/%25%35%63admin",  # %2F, %5C
    "/public/%252e%252e/admin", "/public/%2525", "/public/100%25", "/public/%25",
    "/public/x%3F/../../admin", "/public/x%23/admin", "/public/%3f",  # ? and # end a path
    "/public/%C0%AE%C0%AE/admin", "/public/%c0%af..%c0%afadmin", "/public/%E0%80%AE",
    "/public/%EF%BC%8E%EF%BC%8E/admin", "/public/%EF%BC%8Fadmin", "/public/%E2%80%A5/admin",
    "/public/%EF%BC%85%32%65",
])
async def test_paths_one_more_decoding_would_change_are_refused_everywhere(
    doors: Doors, target: str
) -> None:
    assert expected(target) == (400, None)
    await check_every_door(doors, target)


@pytest.mark.parametrize(("target", "path"), [
    ("/public/caf%c3%a9", "/public/caf%C3%A9"),
    ("/public/%41%c3%a9%2b?x=%25", "/public/A%C3%A9%2B"),
    ("/public/a/%2e%2E/b/./%7e", "/public/b/~"),
    ("/public/%E2%80%A6/x=%3d", "/public/%E2%80%A6/x=%3D"),
    ("/%70ublic/x", "/public/x"),
])
async def test_accepted_paths_reach_the_upstream_exactly_as_routed(
    doors: Doors, target: str, path: str
) -> None:
    assert expected(target) == (200, path)
    await check_every_door(doors, target)


async def test_bounds_are_refused_by_every_door(doors: Doors) -> None:
    await check_every_door(doors, "/public/" + "%41" * 256)  # at the bound: accepted
    await check_every_door(doors, "/public/" + "%41" * 257)
    await check_every_door(doors, "/public" + "/a" * 255)
    await check_every_door(doors, "/public" + "/a" * 256)
    assert expected("/public/" + "%41" * 257)[0] == 400
    assert expected("/public" + "/a" * 256)[0] == 400


_PARTS = st.sampled_from([
    "/", ".", "..", "public", "admin", "a", "%", "%25", "%32", "%65", "%45", "%66", "%35",
    "%63", "%2e", "%2E", "%2f", "%5c", "%3f", "%23", "%41", "%70", "%c3", "%a9", "%c0%ae",
    "%ef%bc%8f", "%EF%BC%8E", "%e2%80%a5", "%20", "%2b", "=", "~",
])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_PARTS, max_size=12).map(lambda parts: "/public/" + "".join(parts)))
async def test_generated_paths_through_every_door(doors: Doors, target: str) -> None:
    await check_every_door(doors, target)


async def test_the_bounds_are_settings(
    clerk: DevIssuer, make_gateway: GatewayFactory, tmp_path: Any
) -> None:
    gw = await make_gateway(config={**ROUTES, "limits": {"max_path_escapes": 16,
                                                         "max_path_segments": 20}})
    for uri, status in (("/public/" + "%41" * 16, 200), ("/public/" + "%41" * 17, 400),
                        ("/public" + "/a" * 19, 200), ("/public" + "/a" * 20, 400)):
        response = await gw.client.get("/", headers={"X-Forwarded-Uri": uri})
        assert response.status == status, uri
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"limits": {"max_path_escapes": 0,
                                               "max_path_segments": "many"}}))
    with pytest.raises(ConfigError) as error:
        load_settings({"CLERK_ISSUER": clerk.issuer}, str(path))
    assert "limits.max_path_escapes" in str(error.value)
    assert "limits.max_path_segments" in str(error.value)
