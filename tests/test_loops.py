"""The event loop setting: uvloop by default where installed, asyncio on request, both work."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.config import ConfigError, load_settings
from gateway.devissuer import DevIssuer
from gateway.loops import loop_factory, loop_name, loop_problem, resolve_loop, run
from tests.conftest import free_port
from tests.proxy_support import Upstream, start_gateway_process

ISSUER = {"CLERK_ISSUER": "https://clerk.example.com"}


async def test_this_async_test_runs_on_the_selected_loop() -> None:
    expected = resolve_loop(os.environ.get("GATEWAY_EVENT_LOOP") or "auto")
    assert loop_name(asyncio.get_running_loop()) == expected


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_run_uses_the_named_loop(choice: str) -> None:
    async def which() -> str:
        return loop_name(asyncio.get_running_loop())

    assert run(which(), choice) == choice
    assert loop_name(loop_factory(choice)()) == choice


def test_auto_means_uvloop_where_it_is_installed() -> None:
    assert resolve_loop("auto") == "uvloop"
    assert loop_problem("auto") is None
    assert loop_problem("uvloop") is None


def test_default_setting_is_auto() -> None:
    assert load_settings(ISSUER).event_loop == "auto"


def test_file_names_the_loop_and_the_environment_overrides_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"event_loop": "asyncio"}))
    assert load_settings(ISSUER, str(path)).event_loop == "asyncio"
    env = {**ISSUER, "GATEWAY_EVENT_LOOP": "UVLoop"}
    assert load_settings(env, str(path)).event_loop == "uvloop"


def test_unknown_loops_are_refused_with_every_other_problem(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"event_loop": "trio", "workers": -1}))
    with pytest.raises(ConfigError) as caught:
        load_settings(ISSUER, str(path))
    text = str(caught.value)
    assert "event_loop: 'trio' must be one of auto, uvloop, asyncio" in text
    assert "workers" in text
    with pytest.raises(ConfigError, match="event_loop: 'tokio' must be one of"):
        load_settings({**ISSUER, "GATEWAY_EVENT_LOOP": "tokio"})


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
@pytest.mark.parametrize("mode", ["proxy", "forward_auth"])
async def test_serve_answers_on_either_loop_and_logs_which(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path, choice: str, mode: str
) -> None:
    env = {"CLERK_ISSUER": clerk.issuer, "GATEWAY_EVENT_LOOP": choice,
           "GATEWAY_LOG_LEVEL": "INFO"}
    if mode == "proxy":
        env["GATEWAY_UPSTREAM"] = upstream.url
    gateway = await start_gateway_process(env, free_port(), free_port(), tmp_path,
                                          "--workers", "1")
    auth = {"Authorization": f"Bearer {clerk.token()}"}
    path = "/api/x" if mode == "proxy" else "/auth"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):  # the first connection, then keep-alive (the fast door's path)
                async with session.get(gateway.url + path, headers=auth) as response:
                    assert response.status == 200, await response.text()
            async with session.get(gateway.url + path) as response:
                assert response.status == 401
    finally:
        assert await gateway.stop() == 0, gateway.log()
    assert f'"event_loop":"{choice}"' in gateway.log(), gateway.log()
    if mode == "proxy":
        assert len(upstream.seen) == 3
