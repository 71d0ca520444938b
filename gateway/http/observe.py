"""Per-request observation shared by every door: in-flight gauge, latency, one log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Histogram

from gateway.logs import ACCESS_LOGGER, write_access
from gateway.metrics import Metrics
from gateway.pipeline import Decision
from gateway.reasons import Reason

__all__ = ["RequestObserver"]

access_log = logging.getLogger(ACCESS_LOGGER)


class RequestObserver:
    """Counts in-flight requests, observes latency and writes one structured line per request."""

    def __init__(self, metrics: Metrics, door: str,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._metrics = metrics
        self._door = door
        self._clock = clock
        self._durations: dict[str, Histogram] = {}
        self._came, self._left = metrics.in_flight_moves(door)

    def begin(self) -> float:
        """Mark a request as started; returns its start time."""
        self._came()
        return self._clock()

    def end(
        self,
        started: float,
        request_id: str,
        method: str,
        status: int,
        decision: Decision | None,
        upstream_status: int | None = None,
        reason: Reason | None = None,
    ) -> None:
        """Mark a request as finished: latency by route, and the access log line.

        `reason` overrides the decision's when the door refused an allowed request itself
        (an upstream failure, an oversize body).
        """
        self._left()
        self.observe(started, request_id, method, status, decision, upstream_status, reason)

    def observe(
        self,
        started: float,
        request_id: str,
        method: str,
        status: int,
        decision: Decision | None,
        upstream_status: int | None = None,
        reason: Reason | None = None,
    ) -> None:
        """Latency by route and the access log line (the in-flight count untouched)."""
        elapsed = self._clock() - started
        route = decision.route.name if decision is not None else "none"
        histogram = self._durations.get(route)
        if histogram is None:
            histogram = self._durations[route] = self._metrics.request_duration.labels(
                self._door, route)
        self._metrics.observe(histogram, elapsed)
        if decision is not None and (token_type := decision.token_type) is not None:
            self._metrics.token_type_decision(token_type, decision.reason)
        if not access_log.isEnabledFor(logging.INFO):
            return
        identity = decision.identity if decision is not None else None
        write_access({
            "request_id": request_id,
            "door": self._door,
            "route": route,
            "method": method,
            "status": status,
            "reason": (reason.label if reason is not None
                       else decision.reason.label if decision is not None else None),
            "user": (identity.user_id or None) if identity else None,
            "org": identity.org_id if identity else None,
            "token_type": decision.token_type if decision is not None else None,
            "duration_ms": round(elapsed * 1000, 3),
            "upstream_status": upstream_status,
        })
