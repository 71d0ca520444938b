"""A gateway that explains itself: start-up facts, dependencies down by name, one-line bad
starts (exit 2, no traceback), issuer/azp/aud mismatches logged expected vs received."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.auth.mismatch import MismatchLog
from gateway.devissuer import DevIssuer
from gateway.loops import resolve_loop
from gateway.reasons import Reason
from tests.conftest import GatewayFactory, free_port

ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def serving(env: dict[str, str], *args: str, until: str = "event loop:",
                  ) -> AsyncIterator[list[str]]:
    """`clerk-gateway serve` (default workers) in text log format; its lines up to `until`."""
    loop = {"GATEWAY_EVENT_LOOP": os.environ["GATEWAY_EVENT_LOOP"]} if os.environ.get(
        "GATEWAY_EVENT_LOOP") else {}  # the loop this run of the suite is on
    full = {"PATH": "/usr/bin:/bin", "GATEWAY_LOG_FORMAT": "text", **loop,
            "GATEWAY_LISTEN": f"127.0.0.1:{free_port()}",
            "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{free_port()}", **env}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", *args, cwd=ROOT, env=full,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any(until in line for line in lines):
                line = (await process.stderr.readline()).decode()
                assert line, "serve exited:\n" + "".join(lines)
                lines.append(line)
        yield lines
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()


def line_with(lines: list[str], text: str, logger: str = "gateway.start: ") -> str:
    """The one line (of the start-up facts logger by default) that starts with `text`."""
    found = [line for line in lines if logger + text in line]
    assert len(found) == 1, (text, lines)
    return found[0]


async def test_start_logs_one_line_per_fact(clerk: DevIssuer, aiohttp_server: object) -> None:
    from aiohttp import web

    upstream = await aiohttp_server(web.Application())  # type: ignore[operator]
    env = {"CLERK_ISSUER": clerk.issuer,
           "GATEWAY_UPSTREAM": f"http://127.0.0.1:{upstream.port}"}
    async with serving(env) as lines:
        assert "proxy" in line_with(lines, "mode:")
        assert "(public)" in line_with(lines, "listening on")
        assert f"http://127.0.0.1:{upstream.port}" in line_with(lines, "upstream:")
        issuer = line_with(lines, "issuer clerk:")
        assert clerk.issuer + "/.well-known/jwks.json" in issuer and clerk.key.kid in issuer
        assert "routes: 0" in line_with(lines, "routes:")
        assert "memory" in line_with(lines, "revocation store:")
        assert "workers: 2" in line_with(lines, "workers:")  # the default: one per CPU here
        running = resolve_loop(os.environ.get("GATEWAY_EVENT_LOOP") or "auto")
        assert f"event loop: {running} " in line_with(lines, "event loop:")
        assert not [line for line in lines if "WARNING" in line.upper()], lines


async def test_dependencies_down_at_start_are_warnings_naming_them(clerk: DevIssuer) -> None:
    jwks = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    upstream = f"http://127.0.0.1:{free_port()}"
    redis = f"redis://127.0.0.1:{free_port()}/0"
    env = {"CLERK_ISSUER": clerk.issuer, "CLERK_JWKS_URL": jwks, "GATEWAY_UPSTREAM": upstream,
           "GATEWAY_REDIS_URL": redis}
    async with serving(env, "--workers", "1") as lines:
        keys = line_with(lines, "issuer clerk:")
        assert "warning" in keys.lower() and jwks in keys and "no key obtained" in keys
        up = line_with(lines, f"upstream {upstream} unreachable")
        assert "warning" in up.lower()
        store = line_with(lines, "revocation store:")
        assert "warning" in store.lower() and "redis unreachable" in store
        assert redis not in "".join(lines)  # the Redis URL may hold a password: never logged


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def bad_start(tmp_path: Path, case: str, port: int) -> tuple[list[str], dict[str, str], str]:
    """The arguments, environment and expected text of one kind of bad start."""
    env = {"CLERK_ISSUER": "http://127.0.0.1:9/", "GATEWAY_LISTEN": f"127.0.0.1:{free_port()}",
           "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{free_port()}"}
    if case == "port_in_use":
        env["GATEWAY_LISTEN"] = f"127.0.0.1:{port}"
        return [], env, f"127.0.0.1:{port} (public listener): address already in use"
    if case == "admin_port_in_use":
        env["GATEWAY_ADMIN_LISTEN"] = f"127.0.0.1:{port}"
        return [], env, f"127.0.0.1:{port} (admin listener): address already in use"
    if case == "unreadable_config":
        return ["--config", str(tmp_path / "missing.yaml")], env, (
            f"config file {tmp_path / 'missing.yaml'}: cannot be read (No such file or directory)")
    if case == "config_is_a_directory":
        return ["--config", str(tmp_path)], env, "cannot be read (Is a directory)"
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:8080\nroutes:\n  - name: a\n   path: /x\n")
    return ["--config", str(bad)], env, "not valid YAML at line 4, column 4: expected <block end>"


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["default_workers", "one"])
@pytest.mark.parametrize("case", ["port_in_use", "admin_port_in_use", "unreadable_config",
                                  "config_is_a_directory", "invalid_yaml"])
async def test_a_bad_start_is_one_line_and_exit_2(
    tmp_path: Path, taken_port: int, case: str, workers: list[str]
) -> None:
    args, env, expected = bad_start(tmp_path, case, taken_port)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", *workers, *args, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    text = err.decode()
    assert process.returncode == 2, text
    assert text.count("\n") == 1, text
    assert expected in text
    assert "Traceback" not in text and out == b""


def test_check_config_warns_about_a_trailing_slash_issuer() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                   "CLERK_ISSUER": "https://clerk.example.com/"})
    assert result.returncode == 0
    warning = line_with(result.stdout.splitlines(), "warning:", logger="")
    assert "'https://clerk.example.com/' ends with '/'" in warning and "wrong_issuer" in warning
    plain = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                   "CLERK_ISSUER": "https://clerk.example.com"})
    assert "warning" not in plain.stdout


# ------------------------------------------------------------------ mismatches, rate-limited


@pytest.mark.parametrize("reason,env,claims,expected,received", [
    (Reason.WRONG_ISSUER, {}, {"iss": "https://other.example.com/"}, None,
     "'https://other.example.com/'"),
    (Reason.WRONG_AUTHORIZED_PARTY, {"CLERK_AUTHORIZED_PARTIES": "https://app.example.com"},
     {"azp": "https://evil.example.com"}, "'https://app.example.com'",
     "'https://evil.example.com'"),
    (Reason.WRONG_AUDIENCE, {"audiences": ["api://orders"]}, {"aud": "api://billing"},
     "'api://orders'", "'api://billing'"),
], ids=["wrong_issuer", "wrong_authorized_party", "wrong_audience"])
async def test_mismatches_log_expected_and_received_never_the_token(
    clerk: DevIssuer, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture,
    reason: Reason, env: dict[str, object], claims: dict[str, str], expected: str | None,
    received: str,
) -> None:
    if "audiences" in env:  # a file setting of the issuer
        gw = await make_gateway(config={"issuers": [{"name": "clerk", **env}]})
    else:
        gw = await make_gateway(env)
    caplog.set_level(logging.INFO, logger="gateway.verify")
    token = clerk.sign(clerk.claims(**claims))
    for _ in range(3):
        response = await gw.get("/", token)
        assert (await response.json())["reason"] == reason.label
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.verify"]
    assert len(lines) == 1, lines  # rate-limited: one line for three refusals
    assert reason.label in lines[0]
    assert f"expected {expected or repr(clerk.issuer)}" in lines[0]
    assert f"received {received}" in lines[0]
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


def test_mismatch_lines_resume_after_the_interval_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    mismatches = MismatchLog(clock=lambda: now[0], interval=10)
    caplog.set_level(logging.INFO, logger="gateway.verify")
    for _ in range(4):
        mismatches.note(Reason.WRONG_ISSUER, ["https://a"], "https://a/")
    mismatches.note(Reason.WRONG_AUDIENCE, ["x"], ["y"])  # another reason: its own line
    now[0] += 11
    mismatches.note(Reason.WRONG_ISSUER, ["https://a"], "x" * 500 + "\n")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "(3 more since the last such line)" in lines[2]
    assert "\n" not in lines[2] and len(lines[2]) < 400  # escaped and shortened


async def test_each_worker_settles_its_heap_once_listening(clerk: DevIssuer) -> None:
    """What start-up made is frozen out of the cyclic collector's full passes (gateway/heap.py)."""
    async with serving({"CLERK_ISSUER": clerk.issuer}, until="heap settled") as lines:
        settled = [line for line in lines if "gateway.start: heap settled:" in line]
        assert len(settled) == 1, lines
        frozen = int(settled[0].split("heap settled: ")[1].split()[0])
        assert frozen > 10_000  # modules, settings, the metrics registry at least


def test_settle_heap_freezes_what_is_alive() -> None:
    import gc

    from gateway.heap import settle_heap

    before = gc.get_freeze_count()
    kept = [object() for _ in range(100)]
    try:
        assert settle_heap() >= before + len(kept)
    finally:
        gc.unfreeze()
