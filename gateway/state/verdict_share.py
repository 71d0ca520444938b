"""Machine-token verdicts shared by every worker: verdicts, the call lease, the 429 back-off.

In namespace ``machine_verdicts``, for one Clerk Backend API (keys prefixed by a digest of
its URL): ``verdict:<digest>`` holds ``encode(verdict)`` under the token's SHA-256 (never the
token) until ``fresh_until + grace``; ``lease:<digest>`` is claimed by the one worker calling
Clerk about that token now; ``backoff`` holds the time until which a 429 (or a failed call)
stops calls. A `LocalVerdicts` sits in front: a request reads the store only on a local miss,
and a store that cannot answer leaves the worker with its local verdicts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.verdicts import LocalVerdicts, Verdict, decode, encode
from gateway.state.call_gate import SharedCallGate, time_in
from gateway.state.store import Record, SharedStore, StoreUnavailable

__all__ = ["MACHINE_VERDICTS", "SharedVerdicts", "VerdictView"]

MACHINE_VERDICTS = "machine_verdicts"


@dataclass(frozen=True, slots=True)
class VerdictView:
    """What every worker knows about one token right now."""

    verdict: Verdict | None
    leased: bool
    blocked_until: float


def _verdict(record: Record | None) -> Verdict | None:
    if record is None:
        return None
    try:
        return decode(record.value.encode())
    except (ValueError, UnicodeEncodeError):
        return None


class SharedVerdicts:
    """A VerdictStore shared by every worker (local verdicts first), plus the per-token
    call lease and the shared back-off (those raise StoreUnavailable)."""

    def __init__(self, store: SharedStore, api_digest: str, local: LocalVerdicts,
                 grace_seconds: float, clock: Callable[[], float]) -> None:
        self._store = store
        self._gate = SharedCallGate(store, MACHINE_VERDICTS, api_digest + ":", clock)
        self._local = local
        self._grace = grace_seconds
        self._clock = clock

    def _key(self, kind: str, digest: bytes = b"") -> str:
        return self._gate.key(kind, digest.hex())

    async def _adopt(self, key: bytes, shared: Verdict | None,
                     held: Verdict | None) -> Verdict | None:
        """The newer of the shared and the local verdict (kept locally)."""
        if shared is None or (held is not None and held.fetched_at >= shared.fetched_at):
            return held
        await self._local.put(key, shared)
        return shared

    async def get(self, key: bytes) -> Verdict | None:
        """The local verdict when fresh, else the newer of it and the shared one."""
        held = await self._local.get(key)
        if held is not None and self._clock() < held.fresh_until:
            return held
        try:
            [record] = await self._store.get_many(MACHINE_VERDICTS, [self._key("verdict", key)])
        except StoreUnavailable:
            return held
        return await self._adopt(key, _verdict(record), held)

    async def put(self, key: bytes, verdict: Verdict) -> None:
        """Remember a verdict here and, when the store answers, for every worker."""
        await self._local.put(key, verdict)
        with contextlib.suppress(StoreUnavailable):
            await self._store.put(MACHINE_VERDICTS, self._key("verdict", key),
                                  encode(verdict).decode(), verdict.fresh_until + self._grace)

    async def view(self, key: bytes) -> VerdictView:
        """The token's shared verdict, whether a worker is asking Clerk, the back-off."""
        record, lease, backoff = await self._store.get_many(MACHINE_VERDICTS, [
            self._key("verdict", key), self._key("lease", key), self._key("backoff")])
        verdict = await self._adopt(key, _verdict(record), await self._local.get(key))
        return VerdictView(verdict, lease is not None, time_in(backoff))

    async def claim(self, key: bytes, seconds: float) -> bool:
        """Become the one worker asking Clerk about the token (for at most ``seconds``)."""
        return await self._gate.claim(key.hex(), seconds)

    async def release(self, key: bytes) -> None:
        """Let other workers ask again (best effort: the lease expires anyway)."""
        await self._gate.release(key.hex())

    async def block(self, until: float) -> None:
        """Stop every worker's calls until ``until`` (a 429's Retry-After)."""
        await self._gate.block(until)
