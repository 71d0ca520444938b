"""Helpers for `serve --workers N` tests: which worker process holds which connection.

A request on a fresh connection goes to whichever worker the kernel picks (SO_REUSEPORT);
these helpers find that worker from /proc, so a test can assert every request AND show that
every worker answered some of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["children", "every_worker", "get_kept_open", "owner_of", "wait_listening"]

T = TypeVar("T")


def children(pid: int) -> list[int]:
    """The direct child processes of a process."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on a loopback TCP port."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A = LISTEN
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    """Socket inodes a process holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _all_listen(workers: list[int], port: int) -> bool:
    listening = listening_inodes(port)
    return len(listening) == len(workers) and all(
        socket_inodes(pid) & listening for pid in workers)


async def wait_listening(parent: int, count: int | None, *ports: int) -> list[int]:
    """The worker pids once `count` of them (any number when None) each listen on every
    port (bounded wait)."""
    workers: list[int] = []
    for _ in range(300):
        workers = children(parent)
        if workers and (count is None or len(workers) == count) and all(
                _all_listen(workers, port) for port in ports):
            return workers
        await asyncio.sleep(0.1)
    raise AssertionError(f"workers {workers} not all listening on {ports}")


def owner_of(server_port: int, client_port: int, workers: list[int]) -> int:
    """The worker holding the accepted side of the connection from `client_port`."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{server_port:04X}") and fields[2].endswith(
                f":{client_port:04X}") and fields[9] != "0":
            inode = fields[9]
    if inode is not None:
        for pid in workers:
            if inode in socket_inodes(pid):
                return pid
    raise AssertionError(f"no worker holds the connection from port {client_port}")


async def every_worker(
    send: Callable[[], Awaitable[tuple[T, int]]], workers: list[int], *, each: int = 3,
    attempts: int = 400,
) -> list[tuple[int, T]]:
    """Call ``send()`` (one request on a fresh connection; it returns its result and the
    worker that answered) until every worker answered ``each`` times; every result."""
    results: list[tuple[int, T]] = []
    for _ in range(attempts):
        result, pid = await send()
        results.append((pid, result))
        if all(sum(1 for p, _ in results if p == w) >= each for w in workers):
            return results
    counts = {w: sum(1 for p, _ in results if p == w) for w in workers}
    raise AssertionError(f"not every worker answered {each} times in {attempts}: {counts}")


async def get_kept_open(port: int, path: str, headers: dict[str, str],
                        owner: Callable[[int], int]) -> tuple[int, bytes, int]:
    """GET on a new keep-alive connection; with the connection still open, ask ``owner``
    which worker holds it (from the client port). (status, body, worker)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        client_port = writer.get_extra_info("sockname")[1]
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await asyncio.wait_for(reader.readexactly(length), 30)
        return status, body, owner(client_port)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
