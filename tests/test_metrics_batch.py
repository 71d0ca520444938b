"""Batched histogram observations reach Prometheus as direct ones would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from gateway.metrics import Metrics

AMOUNTS = [0.0, 0.0004, 0.0005, 0.0007, 0.001, 0.003, 0.02, 0.5, 2.5, 9.0, 10.0, 11.0, 300.0]


def test_batched_observations_equal_direct_ones_once_flushed() -> None:
    batched, direct = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    for amount in AMOUNTS:
        batched.observe(batched.request_duration.labels("proxy", "default"), amount)
        batched.observe(batched.upstream_duration.labels("default"), amount * 2)
        direct.request_duration.labels("proxy", "default").observe(amount)
        direct.upstream_duration.labels("default").observe(amount * 2)
    before = batched.registry.get_sample_value(  # a scrape flushes first: never stale
        "clerk_gateway_request_duration_seconds_count", {"door": "proxy", "route": "default"})
    assert before == len(AMOUNTS)

    def text(metrics: Metrics) -> list[str]:
        return [line for line in generate_latest(metrics.registry).decode().splitlines()
                if "_duration_seconds" in line and "_created" not in line]

    assert text(batched) == text(direct)
    batched.flush()  # nothing pending: flushing again adds nothing
    assert text(batched) == text(direct)
