"""Every Prometheus instrument of the gateway, declared once on an injected registry."""

from __future__ import annotations

import itertools
import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.reasons import Reason

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class _Batch:
    """A histogram child's observations not yet added: their sum and count per bucket."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds  # the upper bounds, the last one +Inf (as Prometheus keeps them)
        self.counts = [0] * len(bounds)
        self.total = 0.0


class _Calls:
    """Calls of `add_one` (an `itertools.count`'s `__next__`: callers on the hot path keep it
    and call it, with no Python frame), taken in batches by `take()` (which moves the count
    itself one on)."""

    __slots__ = ("_counts", "_taken", "add_one")

    def __init__(self) -> None:
        self._counts = itertools.count()
        self.add_one: Callable[[], int] = self._counts.__next__
        self._taken = 0  # where the count stood after the last take

    def take(self) -> int:
        """The calls of `add_one` since the last take."""
        now = next(self._counts)
        calls = now - self._taken
        self._taken = now + 1
        return calls


class _Tally:
    """A counter child's increments, counted in C (_Calls) until they are added at a flush."""

    __slots__ = ("_calls", "add_one", "child")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self._calls = _Calls()
        self.add_one: Callable[[], int] = self._calls.add_one

    def flush(self) -> None:
        """Add the increments since the last flush to the Prometheus child."""
        calls = self._calls.take()
        if calls:
            self.child.inc(calls)


class _FlushFirst(Collector):
    """Registered before every instrument: a scrape first adds the batched counts."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        """Flush the batch; contributes no metric of its own."""
        self._metrics.flush()
        return ()


class Metrics:
    """The gateway's instruments; label values come from closed sets only.

    The counters touched on every request (decisions, cache lookups, revocation checks), the
    latency histograms and the in-flight gauges are batched as plain numbers and added to
    Prometheus when the registry is collected (so a scrape is exact) and by `flush()`, which
    the gateway also calls periodically so that other worker processes' scrapes see them
    within a moment.
    Each Prometheus increment takes a lock; batching keeps them off the hot path.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._tallies: dict[Counter, _Tally] = {}
        self._observed: dict[Histogram, _Batch] = {}
        self._in_flight_now: dict[str, int] = {}
        self._in_flight_calls: dict[str, tuple[_Calls, _Calls]] = {}  # requests in, out
        self._in_flight_children: dict[str, Gauge] = {}
        registry.register(_FlushFirst(self))
        ns = "clerk_gateway"
        self.decisions = Counter(
            "decisions", "Authorization decisions by door, route, outcome and reason.",
            ["door", "route", "outcome", "reason"], namespace=ns, registry=registry)
        self.fast_path = Counter(
            "forward_auth_fast_path", "Forward-auth requests the fast door answered, or handed "
            "to the aiohttp door and why.", ["result"], namespace=ns, registry=registry)
        self.proxy_fast_path = Counter(
            "proxy_fast_path", "Proxied requests the proxy's fast door served, or handed to the "
            "aiohttp door and why.", ["result"], namespace=ns, registry=registry)
        self.request_duration = Histogram(
            "request_duration_seconds", "Time to answer a request, by door and route.",
            ["door", "route"], namespace=ns, registry=registry, buckets=_LATENCY_BUCKETS)
        self.upstream_duration = Histogram(
            "upstream_duration_seconds", "Time until the upstream's response headers, by route.",
            ["route"], namespace=ns, registry=registry, buckets=_LATENCY_BUCKETS)
        self.upstream_errors = Counter(
            "upstream_errors", "Upstream failures by route and kind.",
            ["route", "kind"], namespace=ns, registry=registry)
        self.in_flight = Gauge(
            "in_flight_requests", "Requests being handled, by door.",
            ["door"], namespace=ns, registry=registry, multiprocess_mode="livesum")
        self.key_fetches = Counter(
            "key_fetches", "Key set fetches by issuer and result.",
            ["issuer", "result"], namespace=ns, registry=registry)
        self.keys = Gauge(
            "keys", "Signing keys held, by issuer.",
            ["issuer"], namespace=ns, registry=registry, multiprocess_mode="livemax")
        self.key_last_success = Gauge(
            "key_last_success_timestamp_seconds", "Unix time of the last successful key fetch.",
            ["issuer"], namespace=ns, registry=registry, multiprocess_mode="max")
        self.token_cache_lookups = Counter(
            "token_cache_lookups", "Verified-token cache lookups by result (hit, miss).",
            ["result"], namespace=ns, registry=registry)
        self.token_cache_entries = Gauge(
            "token_cache_entries", "Verified tokens held in the cache.",
            namespace=ns, registry=registry, multiprocess_mode="livesum")
        self.revocation_checks = Counter(
            "revocation_checks", "Revocation checks by source and result.",
            ["source", "result"], namespace=ns, registry=registry)
        self.introspection_calls = Counter(
            "introspection_calls", "Clerk Backend API session look-ups by result.",
            ["result"], namespace=ns, registry=registry)
        self.machine_token_lookups = Counter(
            "machine_token_lookups", "Clerk Backend API look-ups of opaque machine credentials "
            "by token type and result.", ["token_type", "result"], namespace=ns,
            registry=registry)
        self.token_type_decisions = Counter(
            "token_type_decisions", "Decisions on presented credentials by token type and "
            "outcome.", ["token_type", "outcome"], namespace=ns, registry=registry)
        self.webhook_events = Counter(
            "webhook_events", "Webhook deliveries by event type and result.",
            ["type", "result"], namespace=ns, registry=registry)
        self.fail_open = Counter(
            "fail_open", "Requests let through by an explicitly configured fail-open choice.",
            ["component"], namespace=ns, registry=registry)
        self.state_fallbacks = Counter(
            "state_fallbacks", "Operations this worker did on its own because the shared state "
            "store could not answer, by component.", ["component"], namespace=ns,
            registry=registry)
        self.resource_guards = Counter(
            "resource_guards", "Connections cut or requests refused by a resource bound, by "
            "guard.", ["guard"], namespace=ns, registry=registry)
        self.cors_preflights = Counter(
            "cors_preflights", "CORS preflights by door and result (allowed: answered or let "
            "through without a token; refused: decided as any other request).",
            ["door", "result"], namespace=ns, registry=registry)
        self.build_info = Gauge(
            "build_info", "Version of the running gateway.", ["version", "python"],
            namespace=ns, registry=registry, multiprocess_mode="max")
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._decision_children: dict[tuple[str, str, Reason], Callable[[], int]] = {}
        self._token_type_children: dict[tuple[str, Reason], Callable[[], int]] = {}
        self._hit = self.tally(self.token_cache_lookups.labels("hit"))
        self._miss = self.tally(self.token_cache_lookups.labels("miss"))

    def observe(self, child: Histogram, amount: float) -> None:
        """Observe an amount in a histogram child, batched like the counters (its bucket
        found by bisection now, the Prometheus values added at the flush)."""
        batch = self._observed.get(child)
        if batch is None:
            batch = self._observed[child] = _Batch(child._upper_bounds)
        batch.counts[bisect_left(batch.bounds, amount)] += 1
        batch.total += amount

    def tally(self, child: Counter) -> Callable[[], int]:
        """A function adding one to a counter child, batched and free of Python frames: for
        counters touched on every request, kept by the caller."""
        tally = self._tallies.get(child)
        if tally is None:
            tally = self._tallies[child] = _Tally(child)
        return tally.add_one

    def count(self, child: Counter) -> None:
        """Add one to a counter child, batched (for counters touched on every request)."""
        self.tally(child)()

    def in_flight_change(self, door: str, delta: int) -> None:
        """Move the in-flight count of a door, batched like the counters."""
        now = self._in_flight_now
        now[door] = now.get(door, 0) + delta

    def in_flight_moves(self, door: str) -> tuple[Callable[[], int], Callable[[], int]]:
        """Two functions free of Python frames, one request in and one out of the door's
        in-flight count (for every request; added at the flush)."""
        calls = self._in_flight_calls.get(door)
        if calls is None:
            calls = self._in_flight_calls[door] = (_Calls(), _Calls())
            self.in_flight_change(door, 0)  # the series exists from the start
        return calls[0].add_one, calls[1].add_one

    def flush(self) -> None:
        """Add every batched count to its Prometheus instrument."""
        for tally in list(self._tallies.values()):
            tally.flush()
        observed, self._observed = self._observed, {}
        for histogram, batch in observed.items():
            histogram._sum.inc(batch.total)
            for bucket, count in zip(histogram._buckets, batch.counts, strict=True):
                if count:
                    bucket.inc(count)
        now = self._in_flight_now
        for door, (came, left) in self._in_flight_calls.items():
            now[door] = now.get(door, 0) + came.take() - left.take()
        for door, value in now.items():
            gauge = self._in_flight_children.get(door)
            if gauge is None:
                gauge = self._in_flight_children[door] = self.in_flight.labels(door)
            gauge.set(value)

    def decision(self, door: str, route: str, reason: Reason) -> None:
        """Count one decision (children cached: this is on every request)."""
        key = (door, route, reason)
        add_one = self._decision_children.get(key)
        if add_one is None:
            outcome = "allow" if reason.allowed else ("error" if reason.status >= 500 else "deny")
            add_one = self._decision_children[key] = self.tally(
                self.decisions.labels(door, route, outcome, reason.label))
        add_one()

    def cors_preflight(self, door: str, allowed: bool) -> None:
        """Count one CORS preflight."""
        self.count(self.cors_preflights.labels(door, "allowed" if allowed else "refused"))

    def cache_lookup(self, hit: bool) -> None:
        """Count one verified-token cache lookup."""
        (self._hit if hit else self._miss)()

    def token_type_decision(self, token_type: str, reason: Reason) -> None:
        """Count one decision on a presented credential by its type (a closed set)."""
        key = (token_type, reason)
        add_one = self._token_type_children.get(key)
        if add_one is None:
            outcome = "allow" if reason.allowed else ("error" if reason.status >= 500 else "deny")
            add_one = self._token_type_children[key] = self.tally(
                self.token_type_decisions.labels(token_type, outcome))
        add_one()
