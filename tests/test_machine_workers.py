"""Machine credentials with two worker processes (the default on this machine), every request."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import yaml

from gateway.devissuer import DevIssuer
from tests.conftest import free_port
from tests.machine_support import ALL_TYPES, ROUTES, machine_env
from tests.proxy_support import start_gateway_process


async def test_every_request_with_machine_credentials_through_two_workers(
    clerk: DevIssuer, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"token_types": ALL_TYPES, "routes": ROUTES}))
    gateway = await start_gateway_process(
        {"CLERK_ISSUER": clerk.issuer, "GATEWAY_CONFIG": str(config), **machine_env(clerk)},
        free_port(), free_port(), tmp_path, "--workers", "2")
    key = clerk.api_key("org_workers", scopes=("write",))
    revoked = clerk.api_key("user_gone")
    clerk.revoke_machine_token(revoked)
    requests = 150
    try:
        # A fresh connection per request, so the kernel spreads them over both workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(requests):
                async with session.get(f"{gateway.url}/scoped/{i}",
                                       headers={"Authorization": f"Bearer {key}"}) as response:
                    assert response.status == 200, await response.text()
                    assert response.headers["X-Token-Type"] == "api_key"
                    assert response.headers["X-Org-Id"] == "org_workers"
                async with session.get(f"{gateway.url}/session",
                                       headers={"Authorization": f"Bearer {key}"}) as response:
                    assert response.status == 401
                    assert (await response.json())["reason"] == "token_type_not_accepted"
                async with session.get(f"{gateway.url}/keys", headers={
                        "Authorization": f"Bearer {revoked}"}) as response:
                    assert response.status == 401
                    assert (await response.json())["reason"] == "revoked"
    finally:
        code = await gateway.stop()
    assert code == 0, gateway.log()
    # Verdicts are shared by the workers: one call per token (the key and the revoked one).
    assert clerk.hits["api_keys_verify"] == 2
