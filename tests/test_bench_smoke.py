"""The benchmark's report writer, fed fake numbers, and its floor contender, run for real
(the whole benchmark runs via `make bench`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import missed, report
from bench.apps import FloorClient
from gateway.loops import resolve_loop


def _run(rps: float, cpu: float, p50: float = 1.0, p99: float = 3.0) -> dict[str, Any]:
    return {"rps": rps, "requests": int(rps * 10), "non_2xx": 0, "socket_errors": 0,
            "p50_ms": p50, "p90_ms": 2.0, "p99_ms": p99, "command": "wrk ...",
            "cpu_us_per_request": cpu}


def _contender(title: str, rps: list[float], cpu: float, available: bool = True,
               note: str = "", p50: float = 1.0, p99: float = 3.0) -> dict[str, Any]:
    return {"title": title, "available": available, "note": note, "url": "", "pid": 0,
            "server_command": f"run {title}", "runs": [_run(r, cpu, p50, p99) for r in rps]}


def _asyncio_pass() -> dict[str, Any]:
    return {
        "bare": _contender("1. bare", [8_000, 8_000, 8_000], 50.0),
        "gateway_proxy": _contender("6. proxy", [4_000, 4_000, 4_000], 100.0),
        "aiohttp_proxy": _contender("5. aiohttp proxy", [2_000, 2_000, 2_000], 200.0),
    }


def _results() -> dict[str, Any]:
    memory = {"kind": "cache", "entries": 1_000_000, "bound": 100_000, "held_at_end": 100_000,
              "rss_baseline_mb": 50.0, "rss_at_bound_mb": 250.0, "rss_final_mb": 250.5,
              "growth_after_bound_mb": 0.5, "bytes_per_entry": 2000.0, "seconds": 60.0,
              "samples": [{"entries": 0, "rss_mb": 50.0}, {"entries": 100_000, "rss_mb": 250.0}],
              "command": "python -m bench.micro cache-memory"}
    uvloop = {
        "bare": _contender("1. bare", [10_000, 12_000, 11_000], 40.0),
        "naive": _contender("2. naive", [3_000, 3_000, 3_000], 120.0),
        "gateway_fa": _contender("3. fa", [9_000, 10_200, 9_900], 45.0),
        "gateway_proxy": _contender("6. proxy", [], 0.0, False, "not available yet"),
    }
    return {
        "label": "fake numbers", "started": "now", "seconds": 1.0, "command": "python -m bench.run",
        "machine": {"cores": 2, "cpu_model": "Fake CPU", "memory": "1 kB", "kernel": "6",
                    "python": "3.11", "aiohttp": "3", "pyjwt": "2", "cryptography": "4",
                    "nginx": "1.22", "wrk": "4.1", "load_average_at_start": [0.0, 0.0, 0.0]},
        "pinning": {"server_cpus": "0", "load_cpus": "1"},
        "load": {"threads": 1, "connections": 32, "duration": 10.0, "warmup": 1.0, "cpus": "1"},
        "contenders": uvloop,
        "headline_loop": "uvloop",
        "loop_passes": {"uvloop": uvloop, "asyncio": _asyncio_pass()},
        "verify": {"tokens": 10, "passes": 1, "cached_reps": 10, "token_bytes": 900,
                   "bare_pyjwt_us": {"median": 100.0, "min": 90.0},
                   "gateway_first_seen_us": {"median": 110.0, "min": 100.0},
                   "gateway_cached_us": {"median": 2.0, "min": 1.5},
                   "rsa_verify_only_us": {"median": 25.0, "min": 24.0},
                   "first_seen_over_bare": {"median": 1.1, "min": 1.0, "per_pass": [1.1]},
                   "command": "python -m bench.micro verify"},
        "storm": {"cooldown_seconds": 5.0, "duration_seconds": 30.0, "requests": 1000,
                  "rps": 33.0, "non_2xx": 1000, "p99_ms": 1.0, "key_fetches": 8,
                  "fetches_per_minute": 16.0, "cooldown_rate_per_minute": 12.0,
                  "allowed_fetches": 7, "valid_token_after_storm": 200,
                  "min_seconds_between_fetches": 1.0, "cpu_us_per_request": 30.0,
                  "wrk_command": "wrk", "gateway_command": "gateway"},
        "memory_cache": memory,
        "split": {mode: {"loop": "uvloop", "command": f"python -m bench.split {mode}",
                         "share": {"parse": 0.2, "decide": 0.4, "relay": 0.0, "write": 0.1,
                                   "observe": 0.1, "other": 0.2}}
                  for mode in ("forward_auth", "proxy")},
    }


def test_targets_are_ratios_of_medians_with_honest_verdicts() -> None:
    targets = {t["name"]: t for t in report.evaluate(_results())}
    vs_bare = targets["gateway_fa / bare (req/s, uvloop)"]
    assert round(vs_bare["value"], 3) == round(9_900 / 11_000, 3)
    assert vs_bare["met"] is False  # the goal is 1.0x
    vs_naive = targets["gateway_fa / naive (req/s, uvloop)"]
    assert vs_naive["value"] == 3.3 and vs_naive["met"] is False  # the goal is 4x
    proxy = targets["gateway_proxy / aiohttp_proxy (req/s, uvloop)"]
    assert proxy["value"] is None and proxy["met"] is None
    assert proxy["detail"] == "not available yet"
    other = targets["gateway_proxy / aiohttp_proxy (req/s, asyncio, report)"]
    assert other["value"] == 2.0 and other["met"] is None  # reported, the goal is uvloop's
    assert targets["first-seen token / bare jwt.decode (time)"]["met"] is True
    assert targets["unknown-kid storm: key fetches"]["met"] is False  # 8 > 7 and 1 s < 5 s
    memory = targets["1,000,000 entries through the cache: RSS growth after the bound"]
    assert memory["met"] is True


def test_report_files(tmp_path: Path) -> None:
    results = _results()
    report.write(results, tmp_path / "results.json", tmp_path / "results.md")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["cpu_model"] == "Fake CPU"
    assert len(data["targets"]) >= 6
    markdown = (tmp_path / "results.md").read_text()
    assert "**Conditions:** fake numbers" in markdown
    assert "| 3. fa | 9,900 | 9,000, 10,200, 9,900 |" in markdown
    assert "| 6. proxy | not available yet |" in markdown
    assert "### The same contenders on asyncio" in markdown
    assert "| decide | 40% | 18.0 | 40% | n/a |" in markdown  # 0.4 x fa's 45 us CPU/req
    assert "| 6. proxy | 4,000 | 4,000, 4,000, 4,000 |" in markdown
    assert "**NO**" in markdown  # the missed storm target is shown, not hidden
    assert "Fake CPU" in markdown and "wrk 4.1" in markdown


def test_the_in_process_harness_measures_each_mode_and_itself() -> None:
    """bench.inproc: the real listener answers every request of the measured phase (and the
    harness alone, `direct`, answers them too), with a CPU cost per request."""
    from bench import inproc

    for mode, direct in (("proxy", False), ("forward_auth", False), ("proxy", True)):
        result = inproc.measure(mode, 200, 2, "asyncio", direct)
        assert result["requests"] >= 200 and result["loop"] == "asyncio"
        assert result["not_200"] == 0  # the token was accepted, the upstream reached
        assert result["mode"] == ("direct" if direct else mode)
        assert result["cpu_us_per_request"] > 0


def test_the_cpu_split_profiles_the_real_listener_by_stage() -> None:
    from bench import split
    from gateway.loops import run

    for mode in ("forward_auth", "proxy"):
        result = run(split._measure(mode, 300, 2), "asyncio")
        share = result["share"]
        assert result["requests"] == 300 and result["loop"] == "asyncio"
        assert result["not_200"] == 0
        assert abs(sum(share.values()) - 1.0) < 1e-6
        assert share["parse"] > 0 and share["decide"] > 0 and share["write"] > 0
        assert (share["relay"] > 0) == (mode == "proxy")  # only the proxy relays


def _proxies_measured() -> dict[str, Any]:
    """_results() with every proxy contender and the floor measured, and a proxy split."""
    results = _results()
    results["contenders"].update(
        gateway_proxy=_contender("6. proxy", [4_000] * 3, 100.0, p50=8.0, p99=12.0),
        nginx_proxy=_contender("4. nginx", [20_000] * 3, 20.0, p50=1.6, p99=4.0),
        aiohttp_proxy=_contender("5. aiohttp proxy", [2_500] * 3, 160.0),
        relay_floor=_contender("4f. floor", [30_000] * 3, 15.0),
    )
    results["split"]["proxy"]["share"] = {"parse": 0.15, "decide": 0.2, "relay": 0.5,
                                          "write": 0.05, "observe": 0.05, "other": 0.05}
    return results


def test_missed_targets_say_by_how_much_and_why(tmp_path: Path) -> None:
    results = _proxies_measured()
    report.write(results, tmp_path / "results.json", tmp_path / "results.md")
    data = json.loads((tmp_path / "results.json").read_text())
    entries = {m["name"]: m for m in data["missed"]}
    # Only targets with data whose goal is not met; reported-only and unmet-goal ones stay out.
    assert set(entries) == {
        "gateway_fa / bare (req/s, uvloop)", "gateway_fa / naive (req/s, uvloop)",
        "gateway_proxy / aiohttp_proxy (req/s, uvloop)", "gateway_proxy / nginx_proxy "
        "(req/s, uvloop)", "gateway_proxy p99 / nginx_proxy p99 (uvloop)",
        "unknown-kid storm: key fetches"}

    nginx = entries["gateway_proxy / nginx_proxy (req/s, uvloop)"]
    assert nginx["shortfall_percent"] == pytest.approx((0.33 - 0.2) / 0.33 * 100)
    cpu = nginx["cpu"]
    assert cpu["cpu_us"] == {"gateway_proxy": 100.0, "nginx_proxy": 20.0}
    assert cpu["budgeted"] == "gateway_proxy"
    assert cpu["budget_us"] == pytest.approx(20.0 / 0.33)  # nginx's CPU per request / 0.33
    assert cpu["over_budget_us"] == pytest.approx(100.0 - 20.0 / 0.33)
    assert cpu["cut_percent"] == pytest.approx((100.0 - 20.0 / 0.33) / 100.0 * 100)
    floor = cpu["floor"]
    assert (floor["us"], floor["above_us"]) == (15.0, 85.0)
    assert floor["room_us"] == pytest.approx(20.0 / 0.33 - 15.0)
    assert [s["stage"] for s in cpu["stages"][:2]] == ["relay", "decide"]
    assert cpu["stages"][0]["us"] == pytest.approx(50.0)  # 50% of gateway_proxy's 100 us

    aiohttp = entries["gateway_proxy / aiohttp_proxy (req/s, uvloop)"]["cpu"]
    assert aiohttp["budget_us"] == pytest.approx(80.0) and aiohttp["over_budget_us"] == 20.0
    naive = entries["gateway_fa / naive (req/s, uvloop)"]
    assert naive["shortfall_percent"] == pytest.approx(17.5)  # 3.3x against 4x
    assert naive["cpu"]["budget_us"] == 30.0 and naive["cpu"]["floor"] is None
    assert naive["cpu"]["stages"][0] == {"stage": "decide", "share": 0.4, "us": 18.0}

    p99 = entries["gateway_proxy p99 / nginx_proxy p99 (uvloop)"]
    assert p99["shortfall_percent"] == pytest.approx(50.0)  # 3.0x against <= 2x
    lat = p99["latency"]["contenders"]
    assert lat["gateway_proxy"]["p50_from_rps_ms"] == pytest.approx(8.0)  # 32 / 4,000 req/s
    assert lat["nginx_proxy"]["p50_from_rps_ms"] == pytest.approx(1.6)
    assert "shortfall_percent" not in entries["unknown-kid storm: key fetches"]

    text = (tmp_path / "results.md").read_text()
    section = text[text.index("## Missed targets: by how much and why"):
                   text.index("## Throughput")]
    assert "- **0.20x vs goal >= 0.33x: short by 39%.**" in section
    assert ("gateway_proxy <= nginx_proxy's 20.0 us / 0.33 = 60.6 us per request; it uses "
            "100.0 us, **39.4 us over** (65% over the budget: 39% of its CPU per request must "
            "go)") in section
    assert ("- Floor (4f. floor): 15.0 us per request; the budget leaves 45.6 us above it for "
            "all HTTP work; gateway_proxy spends 85.0 us above it (1.86x that room).") in section
    assert "relay 50.0 us (50%), decide 20.0 us (20%)" in section
    assert "Largest: relay and decide. The excess is 79% of the relay stage." in section
    assert "(p50 ~= connections / req/s): 8.00 ms for gateway_proxy, 1.60 ms" in section
    assert "p99 / p50: 1.50 for gateway_proxy, 2.50 for nginx_proxy: gateway_proxy's" in section
    assert "### unknown-kid storm: key fetches" in section


def test_a_budget_under_the_floor_is_said_so() -> None:
    results = _proxies_measured()
    results["contenders"]["relay_floor"] = _contender("4f. floor", [30_000] * 3, 70.0)
    cpu = missed.budget(results, ["gateway_proxy", "nginx_proxy"], ">=", 0.33)
    assert cpu is not None and cpu["floor"]["room_us"] < 0
    assert cpu["floor"]["above_over_room"] is None
    lines = "\n".join(missed.section(results, [{
        "name": "t", "value": 0.2, "goal": ">= 0.33x", "unit": "x", "detail": "d",
        "limit": {"op": ">=", "value": 0.33}, "shortfall_percent": 39.4, "cpu": cpu}]))
    assert "the budget is at or below the floor: no HTTP work fits in it" in lines
    # A "<=" goal between two contenders budgets the second one: api key <= session x 1.1.
    results["contenders"]["gateway_fa_api_key"] = _contender("3m. api key", [9_000] * 3, 55.0)
    api = missed.budget(results, ["gateway_fa", "gateway_fa_api_key"], "<=", 1.1)
    assert api is not None and api["budgeted"] == "gateway_fa_api_key"
    assert api["budget_us"] == pytest.approx(45.0 * 1.1)
    assert api["stages"] is None and api["split_applies"] is False


def test_nothing_missed_is_said_so() -> None:
    results = _results()
    assert missed.section(results, [])[-2] == (
        "None measured: no target with a goal has data in this run.")
    results["targets"] = [{"met": True}, {"met": None}, {"met": True}]
    assert missed.section(results, [])[-2] == "None: all 2 targets with data and a goal are met."


async def test_relay_floor_relays_every_byte_and_parses_each_request() -> None:
    loop = asyncio.get_running_loop()
    received = bytearray()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            heads_before = received.count(b"\r\n\r\n")
            received.extend(data)
            self.transport.write(answer * (received.count(b"\r\n\r\n") - heads_before))

    upstream = await loop.create_server(Upstream, "127.0.0.1", 0)
    clients: list[FloorClient] = []

    def floor_client() -> FloorClient:
        clients.append(FloorClient("127.0.0.1", upstream.sockets[0].getsockname()[1]))
        return clients[-1]

    floor = await loop.create_server(floor_client, "127.0.0.1", 0)
    port = floor.sockets[0].getsockname()[1]
    sent = (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)  # at once: what comes before the upstream is up waits for it
    assert await reader.readexactly(len(answer) * 3) == answer * 3
    assert bytes(received) == sent  # byte for byte, in order
    assert clients[0].messages == 3  # llhttp saw each request whole
    writer.close()

    bad_reader, bad_writer = await asyncio.open_connection("127.0.0.1", port)
    bad_writer.write(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")
    assert await bad_reader.read() == b""  # llhttp refused it: closed, nothing relayed
    assert bytes(received) == sent and clients[1].messages == 0
    bad_writer.close()
    floor.close()
    upstream.close()


@pytest.mark.skipif(shutil.which("wrk") is None or (shutil.which("nginx") is None
                    and not Path("/usr/sbin/nginx").exists()), reason="needs wrk and nginx")
def test_the_harness_runs_the_floor_contender(tmp_path: Path) -> None:
    from bench import run

    loop = resolve_loop(os.environ.get("GATEWAY_EVENT_LOOP") or "auto")
    assert run.main(["--only", "relay_floor", "--rounds", "1", "--duration", "1", "--warmup",
                     "0.5", "--skip", "http,hostile,split,verify,storm,memory,scaling",
                     "--loops", loop, "--no-pin", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    floor = data["contenders"]["relay_floor"]
    assert floor["available"] and "bench.apps relay_floor --port" in floor["server_command"]
    assert f"--loop {loop}" in floor["server_command"]
    (result,) = floor["runs"]  # the harness checked the upstream's body came back first
    assert result["requests"] > 0 and result["non_2xx"] == 0 and result["socket_errors"] == 0
    assert result["cpu_us_per_request"] > 0
    assert "| 4f. floor: byte relay with llhttp parsing" in (tmp_path / "results.md").read_text()
