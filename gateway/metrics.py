"""Every Prometheus instrument of the gateway, declared once on an injected registry."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway import __version__
from gateway.reasons import Reason

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class Metrics:
    """The gateway's instruments; label values come from closed sets only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ns = "clerk_gateway"
        self.decisions = Counter(
            "decisions", "Authorization decisions by door, route, outcome and reason.",
            ["door", "route", "outcome", "reason"], namespace=ns, registry=registry)
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
        self.webhook_events = Counter(
            "webhook_events", "Webhook deliveries by event type and result.",
            ["type", "result"], namespace=ns, registry=registry)
        self.fail_open = Counter(
            "fail_open", "Requests let through by an explicitly configured fail-open choice.",
            ["component"], namespace=ns, registry=registry)
        self.build_info = Gauge(
            "build_info", "Version of the running gateway.", ["version", "python"],
            namespace=ns, registry=registry, multiprocess_mode="max")
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._decision_children: dict[tuple[str, str, Reason], Counter] = {}
        self._hit = self.token_cache_lookups.labels("hit")
        self._miss = self.token_cache_lookups.labels("miss")

    def decision(self, door: str, route: str, reason: Reason) -> None:
        """Count one decision (children cached: this is on every request)."""
        key = (door, route, reason)
        child = self._decision_children.get(key)
        if child is None:
            outcome = "allow" if reason.allowed else ("error" if reason.status >= 500 else "deny")
            child = self.decisions.labels(door, route, outcome, reason.label)
            self._decision_children[key] = child
        child.inc()

    def cache_lookup(self, hit: bool) -> None:
        """Count one verified-token cache lookup."""
        (self._hit if hit else self._miss).inc()
