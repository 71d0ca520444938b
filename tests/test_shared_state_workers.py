"""One gateway, many workers, one truth: revocations through `serve` with several workers and
no Redis (the SQLite store in the state directory), asserting EVERY request on a fresh
connection and showing, from /proc, that every worker answered some of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.devissuer import DevIssuer, SigningKey
from gateway.http.webhooks import WEBHOOK_PATH
from gateway.http.websocket import CLOSE_REVOKED
from tests.conftest import free_port
from tests.proxy_support import GatewayProcess, Upstream, start_gateway_process
from tests.revocation_support import ADMIN_TOKEN, WEBHOOK_SECRET, admin_headers, delivery
from tests.worker_support import (
    children,
    every_worker,
    get_kept_open,
    owner_of,
    wait_listening,
)

PROPAGATION_SECONDS = 1.0  # revocation.local_ttl_seconds: the promise under test


class Workers:
    """A `serve` process tree under test, and how to reach each worker."""

    def __init__(self, process: GatewayProcess, pids: list[int]) -> None:
        self.process = process
        self.pids = pids

    async def public(self, path: str,
                     headers: dict[str, str]) -> tuple[tuple[int, str | None], int]:
        """GET on a fresh connection: ((status, reason), the worker that answered)."""
        status, body, worker = await get_kept_open(
            self.process.port, path, headers,
            lambda client_port: owner_of(self.process.port, client_port, self.pids))
        reason = json.loads(body).get("reason") if status >= 400 else None
        return (status, reason), worker

    async def statuses(self, token: str) -> list[tuple[int, tuple[int, str | None]]]:
        """Fresh-connection requests until every worker answered three of them."""
        auth = {"Authorization": f"Bearer {token}"}

        async def send() -> tuple[tuple[int, str | None], int]:
            return await self.public("/api", auth)

        return await every_worker(send, self.pids)

    async def admin(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, int]:
        """An admin call on a fresh connection: (status, JSON body, worker pid)."""
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session, session.request(
                method, self.process.admin_url + path, **kwargs) as response:
            return (response.status, await response.json(content_type=None),
                    int(response.headers["X-Gateway-Worker"]))

    async def admin_everywhere(self, method: str, path: str,
                               **kwargs: Any) -> list[tuple[int, tuple[int, Any]]]:
        """The admin call repeated on fresh connections until every worker answered once."""

        async def send() -> tuple[tuple[int, Any], int]:
            status, body, pid = await self.admin(method, path, **kwargs)
            return (status, body), pid

        return await every_worker(send, self.pids, each=1)


async def start_workers(clerk: DevIssuer, upstream: Upstream, tmp_path: Path, *args: str,
                        state: Path | None = None, config: dict[str, Any] | None = None,
                        env: dict[str, str] | None = None) -> Workers:
    """`serve` in proxy mode with the admin API and webhooks on, every worker listening."""
    port, admin_port = free_port(), free_port()
    if config is not None:
        path = tmp_path / f"gateway-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        args = ("--config", str(path), *args)
    process = await start_gateway_process({
        "CLERK_ISSUER": clerk.issuer, "GATEWAY_UPSTREAM": upstream.url,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "CLERK_WEBHOOK_SIGNING_SECRET": WEBHOOK_SECRET,
        "GATEWAY_STATE_DIR": str(state or tmp_path / "state"), **(env or {}),
    }, port, admin_port, tmp_path, *args)
    count = int(args[-1]) if "--workers" in args else None
    try:
        pids = await wait_listening(process.proc.pid, count, port, admin_port)
    except AssertionError:
        await process.stop()
        raise
    return Workers(process, pids)


@contextlib.asynccontextmanager
async def serving(clerk: DevIssuer, upstream: Upstream, tmp_path: Path, *args: str,
                  **options: Any) -> AsyncIterator[Workers]:
    """`start_workers`, then a clean stop (exit 0) whatever the test did."""
    running = await start_workers(clerk, upstream, tmp_path, *args, **options)
    try:
        yield running
    finally:
        code = await running.process.stop()
    assert code == 0, running.process.log()


@pytest.fixture(params=[None, "4"], ids=["default-workers", "4-workers"])
async def workers(request: pytest.FixtureRequest, clerk: DevIssuer, upstream: Upstream,
                  tmp_path: Path) -> AsyncIterator[Workers]:
    """The gateway with the default worker count (one per CPU), and with four."""
    args = ("--workers", request.param) if request.param else ()
    async with serving(clerk, upstream, tmp_path, *args) as running:
        yield running


def _all(results: list[tuple[int, Any]], expected: Any) -> None:
    wrong = [(pid, got) for pid, got in results if got != expected]
    assert not wrong, f"{len(wrong)} of {len(results)} answers were not {expected}: {wrong}"


async def _after_propagation(since: float) -> None:
    await asyncio.sleep(max(0.0, since + PROPAGATION_SECONDS - time.monotonic()))


async def test_admin_revocation_is_enforced_by_every_worker_and_lifted_everywhere(
    clerk: DevIssuer, workers: Workers
) -> None:
    assert len(workers.pids) >= 2
    token = clerk.token(sub="user_1", sid="sess_admin", lifetime=600)
    _all(await workers.statuses(token), (200, None))  # every worker: cached "not revoked"

    status, body, _ = await workers.admin(
        "POST", "/admin/revocations", headers=admin_headers(),
        json={"kind": "session", "id": "sess_admin"})
    assert status == 201, body
    revoked_at = time.monotonic()
    await _after_propagation(revoked_at)
    _all(await workers.statuses(token), (401, "revoked"))

    listed = await workers.admin_everywhere("GET", "/admin/revocations",
                                            headers=admin_headers())
    for _pid, (status, body) in listed:  # whichever worker answers, the same one entry
        assert status == 200
        assert [(e["kind"], e["id"]) for e in body["revocations"]] == [
            ("session", "sess_admin")]

    status, body, _ = await workers.admin("DELETE", "/admin/revocations/session/sess_admin",
                                          headers=admin_headers())
    assert status == 200, body
    lifted_at = time.monotonic()
    gone = await workers.admin_everywhere("GET", "/admin/revocations", headers=admin_headers())
    _all([(pid, (status, body["revocations"])) for pid, (status, body) in gone], (200, []))
    await _after_propagation(lifted_at)
    _all(await workers.statuses(token), (200, None))


async def test_signed_webhook_revocation_is_enforced_by_every_worker_and_applied_once(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    async with serving(clerk, upstream, tmp_path) as running:
        token = clerk.token(sub="user_2", sid="sess_hook", lifetime=600)
        _all(await running.statuses(token), (200, None))
        body, headers = delivery("session.revoked", {"id": "sess_hook", "user_id": "user_2"})
        answers = await running.admin_everywhere("POST", WEBHOOK_PATH, data=body,
                                                 headers=headers)
        sent_at = time.monotonic()
        outcomes = [(status, reply["status"]) for _pid, (status, reply) in answers]
        assert outcomes[0] == (200, "applied")  # the first delivery is applied ...
        assert set(outcomes[1:]) == {(200, "duplicate")}  # ... repeats, on any worker, not
        await _after_propagation(sent_at)
        _all(await running.statuses(token), (401, "revoked"))


async def test_open_websockets_of_a_revoked_session_close_4003_on_every_worker(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    async with serving(clerk, upstream, tmp_path) as running:
        await _close_4003_everywhere(clerk, running)


async def _close_4003_everywhere(clerk: DevIssuer, running: Workers) -> None:
    token = clerk.token(sub="user_3", sid="sess_ws", lifetime=600)
    sessions: list[aiohttp.ClientSession] = []
    sockets: list[tuple[int, aiohttp.ClientWebSocketResponse]] = []
    try:
        for _ in range(200):  # fresh connections until every worker holds two sockets
            session = aiohttp.ClientSession()
            sessions.append(session)
            ws = await session.ws_connect(running.process.url + "/ws",
                                          headers={"Authorization": f"Bearer {token}"})
            port = ws.get_extra_info("sockname")[1]
            sockets.append((owner_of(running.process.port, port, running.pids), ws))
            if all(sum(1 for p, _ in sockets if p == w) >= 2 for w in running.pids):
                break
        assert {pid for pid, _ in sockets} == set(running.pids)
        for _pid, ws in sockets:
            await ws.send_str("ping")
            assert (await ws.receive(timeout=10)).data == "echo:ping"

        status, _, _ = await running.admin("POST", "/admin/revocations",
                                           headers=admin_headers(),
                                           json={"kind": "session", "id": "sess_ws"})
        assert status == 201

        async def closed(ws: aiohttp.ClientWebSocketResponse) -> int | None:
            message = await ws.receive(timeout=10)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
            return ws.close_code

        codes = await asyncio.gather(*(closed(ws) for _pid, ws in sockets))
        assert codes == [CLOSE_REVOKED] * len(sockets)
    finally:
        for session in sessions:
            await session.close()


async def test_revocations_survive_kill_9_of_every_process_sigterm_and_restarts(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = await start_workers(clerk, upstream, tmp_path, state=state)
    token = clerk.token(sub="user_4", sid="sess_kill", lifetime=600)
    try:
        for body in ({"kind": "session", "id": "sess_kill"}, {"kind": "user", "id": "user_9"}):
            status, reply, _ = await first.admin("POST", "/admin/revocations",
                                                 headers=admin_headers(), json=body)
            assert status == 201, reply
    finally:
        pids = [first.process.proc.pid, *children(first.process.proc.pid)]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        first.process.proc.wait(10)
    for pid in pids[1:]:  # every worker is gone before the restart
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists() or "zombie" in Path(
                    f"/proc/{pid}/status").read_text().lower():
                break
            await asyncio.sleep(0.1)

    async with serving(clerk, upstream, tmp_path, state=state) as second:
        _all(await second.statuses(token), (401, "revoked"))
        _all(await second.statuses(clerk.token(sub="user_9", lifetime=600)), (401, "revoked"))
        _all(await second.statuses(clerk.token(sub="user_5", lifetime=600)), (200, None))
        listed = await second.admin_everywhere("GET", "/admin/revocations",
                                               headers=admin_headers())
        for _pid, (status, body) in listed:
            assert status == 200
            assert sorted((e["kind"], e["id"]) for e in body["revocations"]) == [
                ("session", "sess_kill"), ("user", "user_9")]
    async with serving(clerk, upstream, tmp_path, state=state) as third:  # after a SIGTERM
        _all(await third.statuses(token), (401, "revoked"))


async def test_an_unknown_kid_storm_makes_one_key_fetch_for_all_workers(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    async with serving(clerk, upstream, tmp_path, config={
            "keys": {"unknown_kid_cooldown_seconds": 600}}) as running:  # one fetch in the test
        before = clerk.hits["jwks"]
        answers: list[tuple[int, tuple[int, str | None]]] = []

        stranger = SigningKey(kid="unused")

        async def forged() -> None:
            token = clerk.sign(clerk.claims(), key=stranger,  # a random kid every time
                               headers={"kid": f"ins_{os.urandom(8).hex()}"})
            result, pid = await running.public("/api", {"Authorization": f"Bearer {token}"})
            answers.append((pid, result))

        for _ in range(15):  # 300 requests, 20 at a time, each on a fresh connection
            await asyncio.gather(*(forged() for _ in range(20)))
        assert len(answers) == 300
        _all(answers, (401, "unknown_key"))
        assert {pid for pid, _ in answers} == set(running.pids)
        assert clerk.hits["jwks"] - before == 1
        _all(await running.statuses(clerk.token(lifetime=600)), (200, None))


async def test_after_rotation_and_an_outage_every_worker_accepts_the_new_key(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    async with serving(clerk, upstream, tmp_path) as running:
        _all(await running.statuses(clerk.token(lifetime=600)), (200, None))
        clerk.rotate()
        token = clerk.token(lifetime=600)  # signed with a key no worker holds yet
        (status, _reason), _pid = await running.public(
            "/api", {"Authorization": f"Bearer {token}"})
        assert status == 200  # one worker fetched the new key set and accepted the token
        clerk.fail_status = 503  # the identity provider goes down
        fetches = clerk.hits["jwks"]
        _all(await running.statuses(token), (200, None))
        assert clerk.hits["jwks"] == fetches  # the others took the key from the shared set


def introspecting(clerk: DevIssuer) -> dict[str, Any]:
    """`serving` options: workers asking the fake Clerk's Backend API about every session."""
    return {"config": {"revocation": {"introspection": True}},
            "env": {"CLERK_SECRET_KEY": clerk.secret_key, "CLERK_API_URL": clerk.issuer}}


async def test_sixteen_concurrent_first_requests_across_workers_make_one_introspection_call(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    async with serving(clerk, upstream, tmp_path, **introspecting(clerk)) as running:
        clerk.sessions["sess_many"] = "active"
        clerk.delay = 0.5  # Clerk answers slowly: every request arrives while it is asked
        auth = {"Authorization": f"Bearer {clerk.token(sid='sess_many', lifetime=600)}"}
        answers = await asyncio.gather(*(running.public("/api", auth) for _ in range(16)))
        assert [result for result, _pid in answers] == [(200, None)] * 16
        assert {pid for _result, pid in answers} == set(running.pids)
        assert clerk.hits["session"] == 1


async def test_a_429_stops_introspection_calls_from_every_worker_until_retry_after(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    async with serving(clerk, upstream, tmp_path, **introspecting(clerk)) as running:
        clerk.sessions.update(sess_first="active", sess_later="active")
        clerk.session_fail_status, clerk.retry_after = 429, 12
        first = {"Authorization": f"Bearer {clerk.token(sid='sess_first', lifetime=600)}"}
        assert (await running.public("/api", first))[0] == (503, "revocation_unavailable")
        limited_at = time.monotonic()
        assert clerk.hits["session"] == 1
        later = clerk.token(sid="sess_later", lifetime=600)
        _all(await running.statuses(later), (503, "revocation_unavailable"))
        assert time.monotonic() - limited_at < 12, "the check outlived Retry-After itself"
        assert clerk.hits["session"] == 1  # no worker called Clerk inside Retry-After
        clerk.session_fail_status = None
        await asyncio.sleep(max(0.0, limited_at + 12.5 - time.monotonic()))
        _all(await running.statuses(later), (200, None))
        assert clerk.hits["session"] == 2  # one call again, its answer shared by all
