"""`clerk-gateway dev-issuer` and `clerk-gateway token`: tokens that work across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.claims import decode_v2_permissions
from gateway.cli import main
from gateway.devtokens import encode_v2_org
from tests.conftest import GatewayFactory, free_port

ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def dev_issuer(state: Path, port: int) -> AsyncIterator[dict[str, str]]:
    """Run `clerk-gateway dev-issuer` as a user would; yield the environment it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "dev-issuer", "--port", str(port),
        "--state-dir", str(state), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    env: dict[str, str] = {}
    try:
        async with asyncio.timeout(30):
            while "CLERK_AUTHORIZED_PARTIES" not in env:
                line = (await process.stdout.readline()).decode()
                assert line, "dev-issuer exited before printing its environment"
                if not line.startswith("#") and "=" in line:
                    name, _, value = line.strip().partition("=")
                    env[name] = value
        yield env
    finally:
        process.terminate()
        await process.wait()


def token(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `clerk-gateway token` and return what it printed."""
    assert main(["token", *args]) == 0
    return capsys.readouterr().out.strip()


async def test_tokens_keep_working_across_dev_issuer_restarts(
    tmp_path: Path, make_gateway: GatewayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    state, port = tmp_path / "state", free_port()
    async with dev_issuer(state, port) as env:
        assert env["CLERK_ISSUER"] == f"http://127.0.0.1:{port}"
        minted = token(capsys, "--state-dir", str(state), "--user", "user_ci", "--org",
                       "org_ci", "--role", "admin")
        gw = await make_gateway(env, issuer_env=False)
        first = await gw.get("/", minted)
        assert first.status == 200, await first.text()
        assert first.headers["X-User-Id"] == "user_ci"
        assert first.headers["X-Role"] == "org:admin"
    async with dev_issuer(state, port) as again:
        assert again == env
        gw = await make_gateway(again, issuer_env=False)  # a fresh key fetch
        second = await gw.get("/", minted)
        assert second.status == 200, await second.text()
    assert oct((state / "signing-key.pem").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("version", ["1", "2"])
async def test_token_flags_become_the_identity(
    version: str, tmp_path: Path, make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "state"
    async with dev_issuer(state, free_port()) as env:
        minted = token(capsys, "--state-dir", str(state), "--token-version", version,
                       "--user", "user_7", "--org", "org_7", "--org-slug", "acme",
                       "--role", "member", "--permission", "org:invoices:read",
                       "--permission", "org:teams:manage", "--plan", "o:pro",
                       "--feature", "o:dashboard", "--session", "sess_7")
        gw = await make_gateway(env, issuer_env=False)
        response = await gw.get("/", minted)
    assert response.status == 200, await response.text()
    headers = response.headers
    assert headers["X-User-Id"] == "user_7"
    assert headers["X-Org-Id"] == "org_7"
    assert headers["X-Org-Slug"] == "acme"
    assert headers["X-Role"] == "org:member"
    assert headers["X-Session-Id"] == "sess_7"
    assert set(headers["X-Org-Permissions"].split(",")) == {
        "org:invoices:read", "org:teams:manage"}
    if version == "2":
        assert headers["X-Plan"] == "o:pro"
        assert "o:dashboard" in headers["X-Features"].split(",")


@pytest.mark.parametrize("flags,reason", [
    (["--session-status", "pending"], "session_pending"),
    (["--lifetime", "-120"], "expired"),
    (["--azp", "http://elsewhere.localhost"], "wrong_authorized_party"),
])
async def test_token_flags_that_make_a_refused_token(
    flags: list[str], reason: str, tmp_path: Path, make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "state"
    async with dev_issuer(state, free_port()) as env:
        minted = token(capsys, "--state-dir", str(state), *flags)
        gw = await make_gateway(env, issuer_env=False)
        response = await gw.get("/", minted)
    assert response.status == 401
    assert (await response.json())["reason"] == reason


def test_a_v2_permission_must_name_a_feature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["token", "--state-dir", str(tmp_path), "--org", "org_1",
                 "--permission", "org:read"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "org:<feature>:<permission>" in err


def test_an_unreadable_key_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "signing-key.pem").write_text("not a key")
    assert main(["token", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dev-issuer state" in err and "Traceback" not in err


_names = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=6)


@given(st.lists(st.tuples(_names, _names), max_size=8), st.lists(_names, max_size=3))
def test_v2_encoding_round_trips_through_the_gateways_decoder(
    grants: list[tuple[str, str]], extra: list[str]
) -> None:
    permissions = [f"org:{feature}:{name}" for feature, name in grants]
    org = encode_v2_org(permissions, extra)
    decoded = decode_v2_permissions(org["fea"], org["per"], org["fpm"])
    assert set(decoded) == set(permissions)
    assert json.dumps(org)  # plain strings, as Clerk signs them
