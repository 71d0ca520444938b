"""Operations: metrics scraped by a real Prometheus, promtool, JSON logs without tokens."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.app import Gateway, build_admin_app, build_public_app
from gateway.config import load_settings
from gateway.devissuer import DevIssuer, SigningKey
from tests.conftest import free_port, serve_app


def require(binary: str) -> str:
    """The binary's path; fail under CI, skip elsewhere, when it is missing."""
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


async def drive_known_sequence(base: str, clerk: DevIssuer) -> None:
    """2 allowed (1 miss, 1 hit), 1 expired, 1 missing token, 1 unknown key."""
    token = clerk.token()
    unknown = clerk.sign(clerk.claims(), key=SigningKey(kid="ins_unknown"))
    async with aiohttp.ClientSession() as session:
        for headers in (
            {"Authorization": f"Bearer {token}"},
            {"Authorization": f"Bearer {token}"},
            {"Authorization": f"Bearer {clerk.token(lifetime=-60)}"},
            {},
            {"Authorization": f"Bearer {unknown}"},
        ):
            async with session.get(base + "/api", headers=headers) as response:
                await response.read()


async def test_metrics_are_exact_after_a_known_sequence(
    clerk: DevIssuer, aiohttp_client: Any
) -> None:
    gateway = Gateway(load_settings({"CLERK_ISSUER": clerk.issuer}))
    public = await serve_app(build_public_app(gateway))
    admin = await aiohttp_client(build_admin_app(gateway))
    try:
        await drive_known_sequence(str(public.make_url("")).rstrip("/"), clerk)
        text = await (await admin.get("/metrics")).text()
    finally:
        await public.close()
    def value(name: str, **labels: str) -> float | None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    decisions = "clerk_gateway_decisions_total"
    door = {"door": "forward_auth", "route": "default"}
    assert value(decisions, **door, outcome="allow", reason="ok") == 2
    assert value(decisions, **door, outcome="deny", reason="expired") == 1
    assert value(decisions, **door, outcome="deny", reason="missing_token") == 1
    assert value(decisions, **door, outcome="deny", reason="unknown_key") == 1
    assert value("clerk_gateway_token_cache_lookups_total", result="hit") == 1
    assert value("clerk_gateway_token_cache_lookups_total", result="miss") == 3
    fetches = "clerk_gateway_key_fetches_total"
    assert value(fetches, issuer="clerk", result="success") == 2  # startup + unknown kid
    assert value(fetches, issuer="clerk", result="error") == 0
    assert value("clerk_gateway_request_duration_seconds_count", **door) == 5
    assert value("clerk_gateway_in_flight_requests", door="forward_auth") == 0
    assert value("clerk_gateway_keys", issuer="clerk") == 1
    assert value("clerk_gateway_build_info", version=__version__,
                 python=platform.python_version()) == 1


async def test_promtool_accepts_the_exposition(clerk: DevIssuer, make_gateway: Any) -> None:
    promtool = require("promtool")
    gw = await make_gateway()
    await gw.get("/", clerk.token())
    await gw.get("/")
    text = await (await gw.admin.get("/metrics")).text()
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_real_prometheus_scrapes_the_decision_counter(
    clerk: DevIssuer, tmp_path: Path
) -> None:
    prometheus = require("prometheus")
    gateway = Gateway(load_settings({"CLERK_ISSUER": clerk.issuer}))
    public = await serve_app(build_public_app(gateway))
    admin = await serve_app(build_admin_app(gateway))
    admin_target = f"127.0.0.1:{admin.port}"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "clerk-gateway",
                            "static_configs": [{"targets": [admin_target]}]}],
    }))
    port = free_port()
    process = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    query = ('sum(clerk_gateway_decisions_total{job="clerk-gateway",outcome="deny"})'
             ' + 100 * sum(clerk_gateway_decisions_total{job="clerk-gateway",outcome="allow"})')
    try:
        await drive_known_sequence(str(public.make_url("")).rstrip("/"), clerk)
        value = None
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/api/v1/query",
                                           params={"query": query}) as response:
                        body = await response.json()
                    result = body["data"]["result"]
                    value = float(result[0]["value"][1]) if result else None
                except (aiohttp.ClientError, KeyError, ValueError):
                    value = None
                if value == 203.0:
                    break
                await asyncio.sleep(0.1)
        assert value == 203.0  # 2 allowed, 3 denied
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        await public.close()
        await admin.close()


def test_log_lines_are_json_with_request_ids_and_never_a_token(tmp_path: Path) -> None:
    script = tmp_path / "drive.py"
    script.write_text('''
import asyncio, sys
import aiohttp
from aiohttp import web
from gateway.devissuer import DevIssuer

async def main():
    clerk = DevIssuer()
    runner = web.AppRunner(clerk.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    clerk.issuer = f"http://127.0.0.1:{port}"
    print(clerk.issuer, flush=True)
    tokens = [clerk.token(), clerk.token(lifetime=-60), clerk.token()[:-3] + "abc"]
    print(" ".join(tokens), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
''')
    issuer_process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                      text=True)
    try:
        assert issuer_process.stdout is not None
        issuer = issuer_process.stdout.readline().strip()
        tokens = issuer_process.stdout.readline().split()
        port, admin_port = free_port(), free_port()
        env = {**os.environ, "CLERK_ISSUER": issuer, "GATEWAY_LISTEN": f"127.0.0.1:{port}",
               "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}", "GATEWAY_LOG_FORMAT": "json",
               "CLERK_SECRET_KEY": "sk_test_NEVER_LOGGED", "CLERK_JWKS_URL": issuer +
               "/.well-known/jwks.json"}
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env,
                                   stderr=subprocess.PIPE, text=True)

        async def drive() -> list[str]:
            ids = []
            async with aiohttp.ClientSession() as session:
                for _ in range(100):
                    try:
                        async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
                for i, token in enumerate(tokens):
                    rid = f"test-request-{i:04d}"
                    ids.append(rid)
                    async with session.get(f"http://127.0.0.1:{port}/x?token={token}", headers={
                        "Authorization": f"Bearer {token}", "Cookie": f"__session={token}",
                        "X-Request-Id": rid,
                    }) as response:
                        assert response.headers["X-Request-Id"] == rid
            return ids

        ids = asyncio.run(drive())
        gateway.send_signal(signal.SIGTERM)
        _, stderr = gateway.communicate(timeout=30)
        assert gateway.returncode == 0
    finally:
        issuer_process.kill()
        issuer_process.wait()
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    requests = [r for r in records if r.get("msg") == "request"]
    assert [r["request_id"] for r in requests] == ids
    assert [r["status"] for r in requests] == [200, 401, 401]
    assert [r["reason"] for r in requests] == ["ok", "expired", "bad_signature"]
    assert requests[0]["user"] == "user_2demo" and requests[0]["route"] == "default"
    assert all(r["door"] == "forward_auth" and r["duration_ms"] >= 0 for r in requests)
    for token in tokens:
        for part in token.split("."):
            assert part not in stderr
    assert "NEVER_LOGGED" not in stderr
