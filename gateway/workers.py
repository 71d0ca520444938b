"""`serve --workers N`: N gateway processes on one port (SO_REUSEPORT), supervised.

The parent creates a fresh directory for prometheus_client's multiprocess mode and starts
each worker as `python -m gateway serve` with `PROMETHEUS_MULTIPROC_DIR` and
`GATEWAY_WORKER_INDEX` in its environment (so prometheus_client sees the directory before
it is first imported). Every worker serves both listeners with `reuse_port`, and `/metrics`
aggregates all workers' files, so any worker answers a scrape with the totals.

SIGTERM or SIGINT to the parent is forwarded to the workers, which drain and exit; the parent
exits 0 when all of them did. A worker that dies on its own is restarted, unless it died
within `STARTUP_GRACE_SECONDS` of starting (bad configuration, port taken): then the parent
stops the others and exits 1.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from gateway.numbers import whole_number

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "MULTIPROC_ENV",
    "RELOAD_ENV",
    "STARTUP_GRACE_SECONDS",
    "WORKER_ENV",
    "multiprocess_registry",
    "reload_generation",
    "run_workers",
    "worker_count",
    "worker_index",
]

log = logging.getLogger("gateway.workers")

WORKER_ENV = "GATEWAY_WORKER_INDEX"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RELOAD_ENV = "GATEWAY_RELOAD_GENERATION_FILE"
STARTUP_GRACE_SECONDS = 10.0
_POLL_SECONDS = 0.1
_KILL_GRACE_SECONDS = 15.0


def worker_count(requested: int | None, configured: int) -> int:
    """Workers to run: the command line, else the configuration, else one per CPU."""
    return requested or configured or os.cpu_count() or 1


def worker_index(environ: dict[str, str] | None = None) -> int | None:
    """This process's worker index when started by `run_workers`, else None."""
    value = (os.environ if environ is None else environ).get(WORKER_ENV)
    return whole_number(value)


def multiprocess_registry() -> Callable[[], CollectorRegistry]:
    """A scrape function that aggregates every worker's metrics files."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    def scrape() -> CollectorRegistry:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry

    return scrape


class _Supervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(self, count: int, command: Sequence[str], env: dict[str, str],
                 metrics_dir: str, stop_timeout: float) -> None:
        self.count = count
        self.command = list(command)
        self.env = env
        self.metrics_dir = metrics_dir
        self.stop_timeout = stop_timeout
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.started: list[float] = [0.0] * count
        self.stopping = False
        self.failed = False
        self.generation = 0

    def start(self, index: int) -> None:
        env = dict(self.env)
        env[WORKER_ENV] = str(index)
        # SIGHUP is ignored until the worker installs its reload handler, so a reload sent
        # while a worker starts cannot kill it.
        self.procs[index] = subprocess.Popen(self.command, env=env, preexec_fn=_ignore_sighup)
        self.started[index] = time.monotonic()

    def signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)

    def on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        """Forward SIGHUP: every worker reloads its configuration.

        The generation is written first, so a worker still starting (SIGHUP ignored until
        its handler is installed) sees that it missed a reload and runs it once it is up.
        """
        log.info("reloading workers")
        self.generation += 1
        _write_generation(self.env[RELOAD_ENV], self.generation)
        self.signal_all(signal.SIGHUP)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("stopping workers", extra={"signal": signal.Signals(signum).name})
        self.stopping = True
        self.signal_all(signal.SIGTERM)

    def reap(self, index: int, proc: subprocess.Popen[bytes], code: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        if self.stopping:
            return
        lived = time.monotonic() - self.started[index]
        if lived < STARTUP_GRACE_SECONDS:
            log.error("worker exited during startup; stopping", extra={
                "worker": index, "pid": proc.pid, "exit_code": code})
            self.failed = True
            self.stopping = True
            self.signal_all(signal.SIGTERM)
            return
        log.warning("worker died; restarting it", extra={
            "worker": index, "pid": proc.pid, "exit_code": code})
        self.start(index)

    def run(self) -> int:
        for index in range(self.count):
            self.start(index)
        codes: dict[int, int] = {}
        deadline: float | None = None
        while True:
            for index, proc in enumerate(self.procs):
                if proc is None or proc.pid in codes:
                    continue
                code = proc.poll()
                if code is not None:
                    codes[proc.pid] = code
                    self.reap(index, proc, code)
            live = [p for p in self.procs if p is not None and p.poll() is None]
            if self.stopping:
                if not live:
                    break
                deadline = deadline or time.monotonic() + self.stop_timeout
                if time.monotonic() > deadline:
                    log.error("workers did not stop in time; killing them")
                    self.signal_all(signal.SIGKILL)
            time.sleep(_POLL_SECONDS)
        # A worker our own SIGTERM reached before it installed its handlers never served.
        last = [p.wait() for p in self.procs if p is not None]
        clean = (0, -signal.SIGTERM)
        if self.failed and 2 in codes.values():
            return 2  # a worker refused to start (its one-line reason is on stderr)
        return 1 if self.failed or any(code not in clean for code in last) else 0


def _write_generation(path: str, generation: int) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="ascii") as handle:
        handle.write(str(generation))
    os.replace(temporary, path)


def reload_generation(environ: Mapping[str, str] | None = None) -> int | None:
    """The supervisor's reload count, as a worker sees it (None outside a supervisor)."""
    path = (os.environ if environ is None else environ).get(RELOAD_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read() or 0)
    except (OSError, ValueError):
        return 0


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def run_workers(count: int, config_path: str | None, shutdown_timeout: float) -> int:
    """Run `count` workers until SIGTERM/SIGINT; the exit code for the parent process."""
    metrics_dir = tempfile.mkdtemp(prefix="clerk-gateway-metrics-")
    env = dict(os.environ)
    env[MULTIPROC_ENV] = metrics_dir
    env["GATEWAY_WORKERS"] = str(count)  # so the first worker can report the count
    env[RELOAD_ENV] = os.path.join(metrics_dir, "reload-generation")
    _write_generation(env[RELOAD_ENV], 0)
    command = [sys.executable, "-m", "gateway", "serve", "--workers", "1"]
    if config_path:
        command += ["--config", config_path]
    supervisor = _Supervisor(count, command, env, metrics_dir,
                             shutdown_timeout + _KILL_GRACE_SECONDS)
    previous = {sig: signal.signal(sig, supervisor.on_signal)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, supervisor.on_reload)
    log.info("starting workers", extra={"workers": count})
    try:
        return supervisor.run()
    finally:
        supervisor.stopping = True
        supervisor.signal_all(signal.SIGKILL)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
