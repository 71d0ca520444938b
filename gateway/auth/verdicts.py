"""Machine-token verdicts, remembered under a digest of the token (never the token itself).

`VerdictStore` is the interface the machine verifier uses; `LocalVerdicts` keeps verdicts in
this process. `SharedVerdicts` (gateway/state/verdict_share.py) implements the same two
methods for every worker, keeping `encode(verdict)` (JSON bytes) under the digest in the
state store with an expiry of `fresh_until + grace`, and reading it back with `decode`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.auth.claims import Identity
from gateway.reasons import Reason

__all__ = ["LocalVerdicts", "Verdict", "VerdictStore", "decode", "encode"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What Clerk said about one token: an identity, or the reason it is refused."""

    identity: Identity | None
    reason: Reason | None
    fetched_at: float
    fresh_until: float  # re-ask after this; the last verdict still serves the grace period

    @property
    def valid(self) -> bool:
        """True when the token was verified."""
        return self.identity is not None


class VerdictStore(Protocol):
    """Where verdicts live between requests (per process, or shared by every worker)."""

    async def get(self, key: bytes) -> Verdict | None:
        """The last verdict for a token digest, fresh or not."""

    async def put(self, key: bytes, verdict: Verdict) -> None:
        """Remember a verdict."""


class LocalVerdicts:
    """A bounded in-process VerdictStore (the oldest tenth is dropped when full)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, Verdict] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: bytes) -> Verdict | None:
        """The last verdict for a token digest, fresh or not."""
        return self._entries.get(key)

    async def put(self, key: bytes, verdict: Verdict) -> None:
        """Remember a verdict, dropping the oldest entries when full."""
        entries = self._entries
        entries.pop(key, None)
        entries[key] = verdict
        if len(entries) > self.max_entries:
            for old in list(entries)[: max(1, self.max_entries // 10)]:
                del entries[old]


_REASONS = {reason.label: reason for reason in Reason}


def encode(verdict: Verdict) -> bytes:
    """A verdict as JSON bytes (for a store shared by workers)."""
    identity = None if verdict.identity is None else dataclasses.asdict(verdict.identity)
    return json.dumps({
        "identity": identity, "reason": None if verdict.reason is None else verdict.reason.label,
        "fetched_at": verdict.fetched_at, "fresh_until": verdict.fresh_until,
    }, separators=(",", ":")).encode()


def decode(data: bytes) -> Verdict:
    """The verdict `encode` wrote; raises ValueError when the bytes are not one."""
    try:
        doc: Any = json.loads(data)
        fields: Any = doc["identity"]
        values: dict[str, Any] = {} if fields is None else {
            k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        identity = None if fields is None else Identity(**values)
        label = doc["reason"]
        reason = None if label is None else _REASONS[label]
        return Verdict(identity, reason, float(doc["fetched_at"]), float(doc["fresh_until"]))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError("not an encoded verdict") from exc
