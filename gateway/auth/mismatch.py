"""Log why a token's iss, azp or aud did not match: expected vs received, rate-limited.

A trailing slash in CLERK_ISSUER or a missing authorized party fails every request with the
same reason; the operator needs to see both values once, not one line per request. Values
come from the token's claims (attacker-controlled): shortened and escaped, never the token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from gateway.reasons import Reason

__all__ = ["INTERVAL_SECONDS", "MismatchLog"]

log = logging.getLogger("gateway.verify")
INTERVAL_SECONDS = 10.0
_MAX_SHOWN = 120


def _shown(value: object) -> str:
    """A claim value fit for a log line: repr-escaped and shortened."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "...'"


class MismatchLog:
    """At most one INFO line per reason per interval, with how many were not logged."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 interval: float = INTERVAL_SECONDS) -> None:
        self._clock = clock
        self._interval = interval
        self._last: dict[Reason, float] = {}
        self._quiet: dict[Reason, int] = {}

    def note(self, reason: Reason, expected: Iterable[str], received: object) -> None:
        """Record one mismatch; log it unless the same reason was logged moments ago."""
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            self._quiet[reason] = self._quiet.get(reason, 0) + 1
            return
        self._last[reason] = now
        suppressed = self._quiet.pop(reason, 0)
        wanted = sorted(expected)
        log.info("token refused as %s: expected %s, received %s%s", reason.label,
                 " or ".join(_shown(v) for v in wanted) or "(nothing configured)",
                 _shown(received),
                 f" ({suppressed} more since the last such line)" if suppressed else "",
                 extra={"reason": reason.label, "expected": wanted,
                        "received": _shown(received), "suppressed": suppressed})
