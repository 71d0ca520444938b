"""`clerk-gateway demo`: a local issuer, an echo upstream and the gateway, no account needed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket

import aiohttp
from aiohttp import web

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.devissuer import DevIssuer
from gateway.logs import setup_logging
from gateway.server import serve

__all__ = ["run_demo"]

_IDENTITY_PREFIXES = ("x-user", "x-org", "x-role", "x-session", "x-plan", "x-features",
                      "x-actor", "x-request-id", "x-token-type", "x-scopes", "x-machine-id")
_TOKEN_TYPES = frozenset({"session_token", "api_key", "m2m_token", "oauth_token", "jwt_template"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _echo(request: web.Request) -> web.Response:
    """The demo upstream: echoes what it received, identity headers included."""
    identity = {
        k: v for k, v in request.headers.items() if k.lower().startswith(_IDENTITY_PREFIXES)
    }
    return web.json_response({
        "upstream": "echo", "method": request.method, "path": request.path_qs,
        "identity_headers": identity,
    })


async def _start(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _banner(issuer: DevIssuer, token: str, api_key: str, port: int, admin_port: int) -> str:
    return f"""
clerk-gateway demo is running (Ctrl-C to stop)
  local issuer : {issuer.issuer}  (JWKS at /.well-known/jwks.json)
  gateway      : http://127.0.0.1:{port}   admin: http://127.0.0.1:{admin_port}/metrics

Allowed, with a Clerk v2 token (org admin, plan o:pro):
  curl -s http://127.0.0.1:{port}/api/hello -H 'Authorization: Bearer {token}'

Allowed, with a Clerk API key (a machine credential, verified at the local Backend API's
/v1/api_keys/verify). Mint any type (api_key, m2m_token, oauth_token, m2m_jwt, oauth_jwt,
jwt_template) with '{issuer.issuer}/_demo/credential?type=m2m_token&scopes=read':
  curl -s http://127.0.0.1:{port}/api/hello -H 'Authorization: Bearer {api_key}'

Refused (no token, then a tampered token):
  curl -si http://127.0.0.1:{port}/api/hello
  curl -si http://127.0.0.1:{port}/api/hello -H 'Authorization: Bearer {token[:-4]}AAAA'

Mint more tokens (query: sub, org, slug, role, plan, features, per, fpm, lifetime):
  curl -s '{issuer.issuer}/_demo/token?sub=user_42&org=org_7&role=member'

WorkOS AuthKit-shaped tokens (issuer "workos"; query: sub, org, role, permissions,
entitlements, lifetime):
  curl -s '{issuer.issuer}/_demo/workos-token?sub=user_01X&role=member'
"""


async def _self_check(port: int, token: str, workos_token: str) -> bool:
    url = f"http://127.0.0.1:{port}/api/hello"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {workos_token}"}) as wos:
            print(f"WorkOS-shaped token: {wos.status}")
            if wos.status != 200:
                return False
        async with session.get(url, headers={"Authorization": f"Bearer {token}",
                                             "X-User-Id": "spoofed"}) as allowed:
            text = await allowed.text()
            print(f"allowed request: {allowed.status} {text[:400]}")
            try:
                echoed = json.loads(text).get("identity_headers", {})
            except ValueError:
                echoed = {}
            # Proxied to the echo upstream, with the verified identity (never the spoofed one).
            allowed_ok = allowed.status == 200 and echoed.get("X-User-Id") == "user_2demo"
        async with session.get(url) as refused:
            print(f"request without a token: {refused.status} {await refused.text()}")
            return allowed_ok and refused.status == 401


async def _api_key_check(port: int, api_key: str) -> bool:
    """The API key reaches the echo upstream as an org's machine credential, unspoofed."""
    url = f"http://127.0.0.1:{port}/api/hello"
    headers = {"Authorization": f"Bearer {api_key}", "X-Token-Type": "spoofed"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as machine:
        text = await machine.text()
        print(f"request with an API key: {machine.status} {text[:400]}")
        try:
            echoed = json.loads(text).get("identity_headers", {})
        except (ValueError, AttributeError):
            echoed = {}
        return machine.status == 200 and echoed.get("X-Token-Type") == "api_key" and (
            echoed.get("X-Org-Id") == "org_2demo")


async def run_demo(port: int = 8080, admin_port: int = 9090, check: bool = False) -> int:
    """Run the demo until interrupted (or, with check, verify it once and exit)."""
    issuer_port, echo_port = _free_port(), _free_port()
    issuer = DevIssuer(f"http://127.0.0.1:{issuer_port}")
    issuer_runner = await _start(issuer.app(), issuer_port)
    echo_app = web.Application()
    echo_app.router.add_route("*", "/{tail:.*}", _echo)
    echo_runner = await _start(echo_app, echo_port)
    settings = load_settings({
        "CLERK_ISSUER": issuer.issuer,
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "GATEWAY_UPSTREAM": f"http://127.0.0.1:{echo_port}",
        "CLERK_SECRET_KEY": issuer.secret_key,
        "CLERK_MACHINE_SECRET_KEY": issuer.machine_secret_key,
        "CLERK_API_URL": issuer.issuer,
        "GATEWAY_LOG_FORMAT": "text",
        "WORKOS_CLIENT_ID": issuer.workos_client_id,
        "WORKOS_API_URL": issuer.issuer,
    })
    settings = dataclasses.replace(settings, token_types=_TOKEN_TYPES)  # every credential type
    setup_logging("WARNING", "text")
    token = issuer.token(org_id="org_2demo", org_slug="demo-org", role="admin", plan="o:pro",
                         features="o:dashboard,o:teams", org_permissions_v2="manage,read",
                         fpm="3,2", lifetime=3600)
    api_key = issuer.api_key("org_2demo", scopes=("read", "write"))
    outcome = 0
    done = asyncio.Event()

    async def on_ready(_gateway: Gateway) -> None:
        nonlocal outcome
        if check:
            workos_token = issuer.workos_token(org_id="org_01DEMO", role="admin")
            checked = (await _self_check(port, token, workos_token)
                       and await _api_key_check(port, api_key))
            outcome = 0 if checked else 1
            done.set()
        else:
            print(_banner(issuer, token, api_key, port, admin_port), flush=True)

    server = asyncio.create_task(serve(settings, on_ready=on_ready, shutdown_timeout=1))
    try:
        if check:
            await asyncio.wait({server, asyncio.create_task(done.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            server.cancel()
        await server
    except asyncio.CancelledError:
        pass
    finally:
        await echo_runner.cleanup()
        await issuer_runner.cleanup()
    return outcome
