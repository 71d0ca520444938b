"""Process plumbing for the harness: free ports, pinned subprocesses, readiness, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = [
    "REPO",
    "Processes",
    "cpu_sets",
    "descendants",
    "ensure_tools",
    "free_port",
    "http_get",
    "machine",
    "wait_http",
]

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_sets(pin: bool) -> tuple[str | None, str | None]:
    """(server cpus, load generator cpus): server on CPU 0, wrk on the last CPU, when pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return str(cpus[0]), ",".join(str(c) for c in cpus[1:])


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """Prefix a command with taskset when cpus are given."""
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def ensure_tools() -> list[str]:
    """Install wrk and nginx from Debian when missing (as root); return what was installed."""
    missing = [name for name, path in (("wrk", "wrk"), ("nginx", "nginx"))
               if shutil.which(path) is None and not Path(f"/usr/sbin/{path}").exists()]
    if not missing:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"bench needs {', '.join(missing)}: install them (apt-get install "
                         f"{' '.join(missing)}) or run as root on Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                   check=True, env=env)
    return missing


def nginx_binary() -> str:
    """Path of the nginx binary."""
    return shutil.which("nginx") or "/usr/sbin/nginx"


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def wait_http(url: str, timeout: float = 20.0, ok: tuple[int, ...] = (200,),
              proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll url until it answers one of the ok statuses; raise on timeout or process exit."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {url} was ready")
        try:
            status, _, _ = http_get(url, timeout=1.0)
            if status in ok:
                return
            last = f"status {status}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s ({last})")


def descendants(pid: int) -> list[int]:
    """Every live process below pid (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Processes:
    """Subprocesses started by the harness, each in its own session, all stopped on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              cpus: str | None = None) -> subprocess.Popen[bytes]:
        """Start cmd (pinned to cpus when given), logging to logdir/name.log."""
        log = (self.logdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(pinned(cmd, cpus), stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO, start_new_session=True)
        log.close()
        self.started.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines a process wrote."""
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process group, then SIGKILL after 5 s."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.started = [(n, p) for n, p in self.started if p is not proc]

    def stop_all(self) -> None:
        """Stop everything still running, newest first."""
        for _, proc in reversed(list(self.started)):
            self.stop(proc)


def _version(cmd: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else (out.stdout + out.stderr).strip()[:80]


def machine() -> dict[str, object]:
    """The machine and versions every figure is attached to."""
    import aiohttp
    import cryptography
    import jwt

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_total = ""
    with contextlib.suppress(OSError):
        mem_total = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "aiohttp": aiohttp.__version__,
        "pyjwt": jwt.__version__,
        "cryptography": cryptography.__version__,
        "nginx": _version([nginx_binary(), "-v"], r"nginx/(\S+)"),
        "wrk": _version(["wrk", "-v"], r"wrk (\S+)"),
        "load_average_at_start": os.getloadavg(),
    }
