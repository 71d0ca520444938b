"""Batched counts and histogram observations reach Prometheus as direct ones would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from gateway.metrics import Metrics
from gateway.reasons import Reason

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


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["count", "tally", "decision", "flush", "scrape"]),
                          st.integers(min_value=0, max_value=40)), max_size=30))
def test_batched_counts_equal_direct_ones_at_every_scrape(steps: list[tuple[str, int]]) -> None:
    """Counts added through count(), a kept tally or decision() are exact at any scrape,
    however they interleave with flushes (each flush reads the tally once)."""
    metrics = Metrics(CollectorRegistry())
    child = metrics.fast_path.labels("answered")
    add_one = metrics.tally(child)
    assert metrics.tally(child) is add_one  # one tally per child
    expected = decisions = 0
    for step, times in steps:
        for _ in range(times):
            if step == "count":
                metrics.count(child)
                expected += 1
            elif step == "tally":
                add_one()
                expected += 1
            elif step == "decision":
                metrics.decision("forward_auth", "default", Reason.OK)
                decisions += 1
        if step == "flush":
            metrics.flush()
        if step in ("flush", "scrape"):
            assert metrics.registry.get_sample_value(
                "clerk_gateway_forward_auth_fast_path_total", {"result": "answered"}) == expected
            assert (metrics.registry.get_sample_value("clerk_gateway_decisions_total", {
                "door": "forward_auth", "route": "default", "outcome": "allow",
                "reason": Reason.OK.label}) or 0.0) == decisions


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["in", "out", "change", "flush", "scrape"]),
                          st.integers(min_value=0, max_value=20)), max_size=30))
def test_in_flight_moves_and_changes_are_exact_at_every_scrape(
    steps: list[tuple[str, int]]
) -> None:
    """Requests in and out through in_flight_moves() (calls without a Python frame) and
    in_flight_change() deltas give the exact in-flight count at any scrape."""
    metrics = Metrics(CollectorRegistry())
    came, left = metrics.in_flight_moves("proxy")
    assert metrics.in_flight_moves("proxy") == (came, left)  # one pair per door
    expected = 0
    for step, times in steps:
        for _ in range(times):
            if step == "in":
                came()
                expected += 1
            elif step == "out":
                left()
                expected -= 1
            elif step == "change":
                metrics.in_flight_change("proxy", -1)
                expected -= 1
        if step == "flush":
            metrics.flush()
        if step in ("flush", "scrape"):
            assert metrics.registry.get_sample_value(
                "clerk_gateway_in_flight_requests", {"door": "proxy"}) == expected
