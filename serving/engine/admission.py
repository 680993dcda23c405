"""Admission control: how many requests each served model may have waiting, shared by every protocol.

Why a bounded queue with early refusal (Triton's answer, and a load balancer's expectation): one
worker serves a fixed number of images per second. Past that, every extra request only waits; once
a request has waited longer than CAPSNET_MAX_LATENCY_MS the model's batcher drops it, after the
server already parsed, validated and queued it. Under 8x overload that wasted work, plus a traceback
per dropped request, cut useful throughput to a quarter (issue 30). So each model admits at most
CAPSNET_MAX_QUEUE requests at once (parsing, queued or in a batch), counted across the BentoML JSON
APIs, OIP REST and OIP gRPC; the next one is refused at once, before its body is parsed, with 503 and
`Retry-After` (gRPC: UNAVAILABLE). The admitted ones see a queue short enough to finish inside the
latency budget, so the model runs full batches of requests that will be answered. A request that is
admitted but still waits past the budget (a burst, a slow batch) is shed the same way.

Everything here runs on the service's event loop (the BentoML app, the OIP REST listener and the gRPC
server share it); the lock only guards against a caller from another thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from serving.errors import QUEUE_FULL, SETTING_OF, Overloaded

log = logging.getLogger(__name__)

SUMMARY_INTERVAL_S = 10.0


class Admission:
    """Per-model counts of admitted requests, the refusals, and their summary in the log.

    `on_refused(model, reason)` is called once per refused or shed request (the Prometheus counter);
    `clock` is injectable for tests."""

    def __init__(self, max_queue: int, retry_after_s: int,
                 on_refused: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, summary_interval_s: float = SUMMARY_INTERVAL_S
                 ) -> None:
        if max_queue < 1:
            raise ValueError("CAPSNET_MAX_QUEUE must be at least 1")
        self.max_queue, self.retry_after_s = max_queue, retry_after_s
        self.on_refused, self.clock, self.summary_interval_s = on_refused, clock, summary_interval_s
        self.waiting: Counter[str] = Counter()  # model -> requests admitted and not yet answered
        self.refused_total: Counter[tuple[str, str]] = Counter()  # (model, reason) -> since start
        self._window: Counter[str] = Counter()  # reason -> refused since the last summary line
        self._window_start: float | None = None
        self._lock = threading.Lock()

    @contextmanager
    def admit(self, model: str) -> Iterator[None]:
        """Hold one of `model`'s places for the duration of the block; Overloaded (counted) when none
        is free."""
        with self._lock:
            full = self.waiting[model] >= self.max_queue
            if not full:
                self.waiting[model] += 1
        if full:
            raise self.refuse(model, QUEUE_FULL)
        try:
            yield
        finally:
            with self._lock:
                self.waiting[model] -= 1
                if not self.waiting[model]:
                    del self.waiting[model]

    def refuse(self, model: str, reason: str, count: bool = True) -> Overloaded:
        """Count one refused or shed request and return the exception that answers it (`count` off:
        one already counted where it was raised)."""
        refusal = Overloaded(model, reason, self.retry_after_s, self.max_queue)
        if not count:
            return refusal
        with self._lock:
            self.refused_total[model, reason] += 1
            self._window[reason] += 1
            first_in_window = self._window_start is None
            if first_in_window:
                self._window_start = self.clock()
        if self.on_refused is not None:
            self.on_refused(model, reason)
        if first_in_window:
            self._schedule_summary()
        elif self.clock() - (self._window_start or 0.0) >= self.summary_interval_s:
            self.log_summary()
        return refusal

    def _schedule_summary(self) -> None:
        """One summary line when this window closes, even if nothing is refused after it."""
        try:
            asyncio.get_running_loop().call_later(self.summary_interval_s, self.log_summary)
        except RuntimeError:  # no event loop in this thread: the next refusal after the window logs it
            pass

    def log_summary(self) -> None:
        """At most one WARNING line per window: how many were refused, and why (no traceback per request)."""
        with self._lock:
            window, start = self._window, self._window_start
            self._window, self._window_start = Counter(), None
        if not window or start is None:
            return
        seconds = max(self.clock() - start, self.summary_interval_s)
        reasons = ", ".join(f"{n:,} {reason} ({SETTING_OF[reason]})" for reason, n in sorted(window.items()))
        log.warning("overloaded: refused %s requests in the last %.0f s: %s", f"{sum(window.values()):,}",
                    seconds, reasons)

    def snapshot(self) -> dict[str, Any]:
        """What /metadata shows: the limits, each model's waiting count and its refusals so far."""
        with self._lock:
            refused: dict[str, dict[str, int]] = {}
            for (model, reason), n in self.refused_total.items():
                refused.setdefault(model, {})[reason] = n
            return {"max_queue": self.max_queue, "retry_after_s": self.retry_after_s,
                    "waiting": dict(self.waiting), "refused": refused}
