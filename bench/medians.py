"""One contender's medians over its rounds, from the harness's raw results."""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["median_cpu", "median_of", "median_rps"]

Result = dict[str, Any]


def _runs(results: Result, key: str) -> list[Result]:
    """The contender's runs on the results' pass; none when it was not run or not available."""
    contender = results.get("contenders", {}).get(key)
    if not contender or not contender["available"]:
        return []
    return list(contender["runs"])


def median_of(results: Result, key: str, field: str) -> float | None:
    """The median of one number of a contender's runs (rps, p50_ms, p99_ms, ...)."""
    values = [r[field] for r in _runs(results, key) if r.get(field) is not None]
    return float(statistics.median(values)) if values else None


def median_rps(results: Result, key: str) -> float | None:
    """Median req/s of a contender."""
    return median_of(results, key, "rps")


def median_cpu(results: Result, key: str) -> float | None:
    """Median server CPU microseconds per request of a contender (runs that measured it)."""
    values = [r["cpu_us_per_request"] for r in _runs(results, key)
              if r.get("cpu_us_per_request")]
    return float(statistics.median(values)) if values else None
