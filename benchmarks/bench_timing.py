"""The one timing loop the benchmark scripts share (imported as a sibling module when a script
runs as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_rate(fn: Callable[[], Any], items_per_call: int, repeats: int = 5, min_seconds: float = 0.5) -> float:
    """Median items/s of `fn` over `repeats` timed rounds.

    Two untimed warm-up calls first (allocators, thread pools, ONNX Runtime's first-run arena);
    each round repeats `fn` until it lasts at least `min_seconds`, so fast calls are timed reliably.
    """
    fn()
    t = time.perf_counter()
    fn()
    calls = max(1, int(min_seconds / max(1e-6, time.perf_counter() - t)))
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(items_per_call * calls / (time.perf_counter() - t))
    return statistics.median(rates)
