"""The timing loops the benchmark scripts share (imported as a sibling module when a script runs
as `python benchmarks/NAME.py`). On a GPU pass `sync` (torch.cuda.synchronize): kernels run
asynchronously, so a clock read without it times the launches, not the work."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def _no_sync() -> None:
    pass


def median_rate(fn: Callable[[], Any], items_per_call: int, repeats: int = 5, min_seconds: float = 0.5,
                sync: Callable[[], None] = _no_sync) -> float:
    """Median items/s of `fn` over `repeats` timed rounds.

    Two untimed warm-up calls first (allocators, thread pools, ONNX Runtime's first-run arena);
    each round repeats `fn` until it lasts at least `min_seconds`, so fast calls are timed reliably;
    `sync` runs before each clock read.
    """
    fn()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    calls = max(1, int(min_seconds / max(1e-6, time.perf_counter() - t)))
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        rates.append(items_per_call * calls / (time.perf_counter() - t))
    return statistics.median(rates)


def median_latency_ms(fn: Callable[[], Any], calls: int = 50, sync: Callable[[], None] = _no_sync) -> float:
    """p50 wall time of one call of `fn` (each call waited for with `sync`), in milliseconds,
    after two untimed warm-up calls."""
    for _ in range(2):
        fn()
        sync()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)
