"""Configuration reload: in-process Gateway.reload and a real SIGHUP to `python -m gateway`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_settings
from gateway.devissuer import DevIssuer
from gateway.reload import reload_from_sources
from tests.conftest import GatewayFactory, free_port

ADMIN_ONLY = {"routes": [{"name": "admin", "path_prefix": "/admin",
                          "require": {"role": "admin"}}]}
ADMIN_PUBLIC = {"routes": [{"name": "admin", "path_prefix": "/admin", "access": "public"}]}


def write(path: Path, config: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


async def test_reload_swaps_the_route_table(
    clerk: DevIssuer, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await make_gateway(config=ADMIN_ONLY)
    member = clerk.token(org_id="org_1", role="member")
    assert (await gw.get("/admin", member)).status == 403
    new = load_settings({"CLERK_ISSUER": clerk.issuer}, write(tmp_path / "b.yaml", ADMIN_PUBLIC))
    result = await gw.gateway.reload(new)
    assert result.routes == 1 and result.issuers_added == () and result.restart_required == ()
    assert (await gw.get("/admin")).status == 200
    assert gw.gateway.settings.routes == new.routes
    assert clerk.hits["jwks"] == 1  # the unchanged issuer kept its keys


async def test_reload_adds_and_removes_issuers_and_changes_header_mapping(
    clerk: DevIssuer, make_gateway: GatewayFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    second = DevIssuer()
    server = await aiohttp_server(second.app())
    second.issuer = str(server.make_url("")).rstrip("/")
    gw = await make_gateway(config={})
    env = {"CLERK_ISSUER": clerk.issuer}
    theirs = second.token(sub="user_second")
    ours = clerk.token(sub="user_first")
    assert (await gw.get("/", ours)).headers["X-User-Id"] == "user_first"  # now cached
    assert (await (await gw.get("/", theirs)).json())["reason"] == "wrong_issuer"

    added = load_settings(env, write(tmp_path / "added.yaml", {
        "issuers": [{"name": "second", "issuer": second.issuer}],
        "identity_headers": {"user_id": "X-Auth-User"},
    }))
    result = await gw.gateway.reload(added)
    assert result.issuers_added == ("second",)
    assert second.hits["jwks"] == 1  # keys fetched before the swap
    response = await gw.get("/", theirs)
    assert response.status == 200 and response.headers["X-Auth-User"] == "user_second"
    # A token verified before the reload gets the new header mapping too.
    response = await gw.get("/", ours)
    assert response.headers["X-Auth-User"] == "user_first" and "X-User-Id" not in response.headers
    ready = await gw.admin.get("/readyz")
    assert (await ready.json())["checks"] == {
        "keys:clerk": True, "keys:second": True, "state": True}

    removed = load_settings(env, write(tmp_path / "removed.yaml", {}))
    result = await gw.gateway.reload(removed)
    assert result.issuers_removed == ("second",)
    assert (await (await gw.get("/", theirs)).json())["reason"] == "wrong_issuer"
    assert "second" not in gw.gateway.keys
    assert clerk.hits["jwks"] == 1


async def test_changed_issuer_settings_get_fresh_keys(
    clerk: DevIssuer, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await make_gateway(config={})
    token = clerk.token()
    assert (await gw.get("/", token)).status == 200
    pinned = load_settings({"CLERK_ISSUER": clerk.issuer}, write(tmp_path / "p.yaml", {
        "issuers": [{"name": "clerk", "issuer": clerk.issuer, "authorized_parties": ["x"]}]}))
    result = await gw.gateway.reload(pinned)
    assert result.issuers_replaced == ("clerk",)
    assert clerk.hits["jwks"] == 2
    # The verified-token cache was not carried over: the new azp check applies at once.
    assert (await (await gw.get("/", token)).json())["reason"] == "wrong_authorized_party"


async def test_start_up_only_settings_are_kept_and_reported(
    clerk: DevIssuer, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await make_gateway(config=ADMIN_ONLY)
    listen = gw.gateway.settings.listen
    new = load_settings({"CLERK_ISSUER": clerk.issuer, "GATEWAY_LISTEN": "127.0.0.1:1"},
                        write(tmp_path / "l.yaml", {**ADMIN_PUBLIC, "realm": "other"}))
    result = await gw.gateway.reload(new)
    assert set(result.restart_required) == {"listen", "realm"}
    assert gw.gateway.settings.listen == listen and gw.gateway.settings.realm == "clerk-gateway"
    assert (await gw.get("/admin")).status == 200  # the reloadable part was applied


async def test_proxy_and_other_start_up_sections_are_kept_and_named(
    clerk: DevIssuer, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """The header hygiene, the pool and the door limits are built once: a reload that changes
    `proxy`, `limits` or `revocation` keeps the running values and names each section."""
    gw = await make_gateway(config=ADMIN_ONLY)
    running = gw.gateway.settings
    new = load_settings({"CLERK_ISSUER": clerk.issuer}, write(tmp_path / "p.yaml", {
        **ADMIN_PUBLIC,
        "proxy": {"forward_authorization": not running.proxy.forward_authorization,
                  "strip_header_prefixes": ["X-Internal-"]},
        "limits": {"max_header_bytes": running.limits.max_header_bytes // 2},
        "revocation": {"local_ttl_seconds": running.revocation.local_ttl_seconds + 1},
    }))
    result = await gw.gateway.reload(new)
    assert set(result.restart_required) == {"proxy", "limits", "revocation"}
    kept = gw.gateway.settings
    assert (kept.proxy, kept.limits, kept.revocation) == (
        running.proxy, running.limits, running.revocation)
    assert (await gw.get("/admin")).status == 200  # the reloadable part was applied


async def test_invalid_reload_keeps_the_running_configuration(
    clerk: DevIssuer, make_gateway: GatewayFactory, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await make_gateway(config=ADMIN_ONLY)
    member = clerk.token(org_id="org_1", role="member")
    bad = write(tmp_path / "bad.yaml", {"routes": [
        {"name": "admin", "path_prefix": "/admin", "access": "public"},
        {"name": "x", "path_template": "/x/{id"},
        {"name": "y", "path_prefix": "/admin/y"},
    ]})
    with caplog.at_level(logging.ERROR, logger="gateway.reload"):
        result = await reload_from_sources(gw.gateway, {"CLERK_ISSUER": clerk.issuer}, bad)
    assert result is None
    assert (await gw.get("/admin", member)).status == 403  # the old rule is still in force
    records = [r for r in caplog.records if r.name == "gateway.reload"]
    assert len(records) == 1
    problems = records[0].__dict__["problems"]
    assert any("routes[1].path_template" in p for p in problems)
    assert any("routes[2]: route 'y' is unreachable" in p for p in problems)


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                headers: dict[str, str]) -> int:
    """One forward-auth request on a kept-alive connection; the status."""
    lines = ["GET / HTTP/1.1", "Host: gateway.test"] + [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.decode().split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    await reader.readexactly(length)
    return int(head.split()[1])


async def _wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_sighup_reloads_a_running_server_without_dropping_connections(
    clerk: DevIssuer, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    write(config, ADMIN_ONLY)
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "CLERK_ISSUER": clerk.issuer, "GATEWAY_LISTEN": f"127.0.0.1:{port}",
           "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}", "GATEWAY_LOG_FORMAT": "json",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log_file)
    try:
        async def ready() -> bool:
            try:
                _, status = await _probe(admin_port)
            except OSError:
                return False
            return status == 200

        await _wait_for(ready, "the gateway to be ready")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        member = {"Authorization": f"Bearer {clerk.token(org_id='org_1', role='member')}",
                  "X-Forwarded-Uri": "/admin"}
        assert await _http(reader, writer, member) == 403

        write(config, ADMIN_PUBLIC)
        process.send_signal(signal.SIGHUP)
        anonymous = {"X-Forwarded-Uri": "/admin"}

        async def public_now() -> bool:
            return await _http(reader, writer, anonymous) == 200

        await _wait_for(public_now, "the new rule (same connection)")

        config.write_text("routes:\n  - name: Broken\n    path_template: /x/{id\n")
        process.send_signal(signal.SIGHUP)

        async def refused_logged() -> bool:
            # By each of the two workers: the one serving this connection applied the first
            # reload, so it logs once; the other may read the broken file for the first
            # SIGHUP already when its reload runs late (a loaded machine), and then logs twice.
            return log_path.read_bytes().count(b"configuration reload refused") >= 2

        await _wait_for(refused_logged, "the refused reload to be logged")
        assert await _http(reader, writer, anonymous) == 200  # last good config stays
        writer.close()
        lines = [json.loads(line) for line in log_path.read_text().splitlines()
                 if "configuration reload refused" in line]
        assert len(lines) == 2  # the supervisor forwarded SIGHUP to both workers
        assert any("routes[0].name" in p for p in lines[0]["problems"])
        assert any("routes[0].path_template" in p for p in lines[0]["problems"])
        assert process.returncode is None  # still serving
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)


async def _probe(port: int) -> tuple[bytes, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return data, int(data.split()[1]) if data else 0
