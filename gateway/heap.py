"""The worker's heap after start-up: out of the cyclic collector's sight.

Everything alive once a worker listens (modules, settings, routes, the metrics registry, the
key sets) lives as long as the worker. Python's full collections would walk all of it again
and again while requests wait; `gc.freeze()` moves it to a permanent generation, so a full
collection during traffic scans only what traffic created (shorter pauses, a lower p99).
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> int:
    """Collect once, then freeze what survived; returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
