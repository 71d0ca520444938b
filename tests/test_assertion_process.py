"""Assertions from `serve --workers 2`: one key for every worker and restart, verified by the
README's own Python snippet."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import yaml

from gateway.devissuer import DevIssuer
from tests.conftest import free_port
from tests.proxy_support import ROOT, start_gateway_process

ISSUER = "https://gateway.example.com"
AUDIENCE = "https://api.example.com"


def _readme_verifier(gateway_url: str) -> Any:
    """The `caller` function of the README's Python verification snippet."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Verifying it upstream.**"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    namespace: dict[str, Any] = {"GATEWAY": gateway_url, "AUDIENCE": AUDIENCE, "ISSUER": ISSUER}
    exec(compile(match[1], "README.md", "exec"), namespace)
    return namespace["caller"]


async def _assertions(url: str, token: str, count: int) -> list[str]:
    """`count` decisions, each on a fresh connection (so both workers answer)."""
    found = []
    for _ in range(count):
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session, session.get(
                url, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
            found.append(response.headers["X-Gateway-Assertion"])
    return found


async def test_every_worker_and_restart_sign_with_one_key(
    clerk: DevIssuer, tmp_path: Path
) -> None:
    """Every answer from two workers, before and after a restart, verifies with one kid."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"assertion": {
        "enabled": True, "issuer": ISSUER, "audience": AUDIENCE}}))
    env = {"CLERK_ISSUER": clerk.issuer, "GATEWAY_CONFIG": str(config),
           "GATEWAY_STATE_DIR": str(tmp_path / "state")}
    kids: set[str] = set()
    for _run in range(2):
        port, admin_port = free_port(), free_port()
        process = await start_gateway_process(env, port, admin_port, tmp_path, "--workers", "2")
        try:
            caller = _readme_verifier(process.url)
            tokens = [clerk.token(sub=f"user_{i}") for i in range(3)]
            for i, token in enumerate(tokens):
                for assertion in await _assertions(process.url, token, 6):
                    claims = await asyncio.to_thread(caller, assertion)
                    assert claims["sub"] == f"user_{i}"
                    assert claims["aud"] == AUDIENCE
                    kids.add(jwt.get_unverified_header(assertion)["kid"])
        finally:
            assert await process.stop() == 0
    assert len(kids) == 1
