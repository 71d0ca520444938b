"""Drive a URL with wrk and parse its summary (printed as JSON by lua/report.lua)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.procs import descendants, pinned

__all__ = ["LUA", "Load", "WrkResult", "run_wrk"]

LUA = Path(__file__).resolve().parent / "lua"


@dataclass(frozen=True)
class Load:
    """The wrk load every contender gets."""

    threads: int = 1
    connections: int = 32
    duration: float = 10.0
    warmup: float = 1.0
    cpus: str | None = None


@dataclass(frozen=True)
class WrkResult:
    """One wrk run."""

    rps: float
    requests: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    command: str
    cpu_us_per_request: float | None = None


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by these processes and their descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in {p for root in pids for p in (root, *descendants(root))}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _command(url: str, load: Load, duration: float, headers: dict[str, str],
             script: Path) -> list[str]:
    cmd = ["wrk", f"-t{load.threads}", f"-c{load.connections}", f"-d{duration:g}s",
           "--timeout", "5s", "-s", str(script)]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    return pinned([*cmd, url], load.cpus)


def display(cmd: list[str], secrets: dict[str, str]) -> str:
    """The command as a shell line, with secret values replaced by their names."""
    line = shlex.join(cmd)
    for name, value in secrets.items():
        line = line.replace(value, name)
    return line


def run_wrk(url: str, load: Load, headers: dict[str, str] | None = None,
            script: Path = LUA / "report.lua", duration: float | None = None,
            env: dict[str, str] | None = None, secrets: dict[str, str] | None = None,
            warmup: bool = True, pids: list[int] | None = None) -> WrkResult:
    """Warm up, then run wrk once and return its numbers (and the CPU the pids used)."""
    headers = headers or {}
    run_env = {**os.environ, "BENCH_REPORT_LUA": str(LUA / "report.lua"), **(env or {})}
    if warmup and load.warmup > 0:
        subprocess.run(_command(url, load, load.warmup, headers, script), capture_output=True,
                       env=run_env, timeout=load.warmup + 30, check=False)
    seconds = duration if duration is not None else load.duration
    cmd = _command(url, load, seconds, headers, script)
    cpu_before = cpu_seconds(pids) if pids else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=seconds + 60,
                         check=False)
    cpu_used = cpu_seconds(pids) - cpu_before if pids else None
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[:400]}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = data["errors"]
    lat = data["latency_us"]
    seconds_run = data["duration_us"] / 1e6
    return WrkResult(
        rps=data["requests"] / seconds_run if seconds_run else 0.0,
        requests=data["requests"],
        non_2xx=errors["status"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        command=display(cmd, secrets or {}),
        cpu_us_per_request=(cpu_used / data["requests"] * 1e6
                            if cpu_used is not None and data["requests"] else None),
    )
