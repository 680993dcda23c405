"""Our Prometheus series on BentoML's /metrics, beside its own.

Created on first use, not at import: BentoML's workers set PROMETHEUS_MULTIPROC_DIR after the service
module is imported, and a series created before that would never reach /metrics (the reason BentoML's
own `bentoml.metrics` defers its import too)."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def refused_requests() -> Any:
    """capsnet_requests_refused_total{model, reason}: requests answered 503 / UNAVAILABLE because the
    model was full (reason "queue full") or the request waited past the latency budget."""
    import prometheus_client

    return prometheus_client.Counter("capsnet_requests_refused", "Requests refused or shed because the "
                                     "model was overloaded (503 / UNAVAILABLE)", ["model", "reason"])


def count_refused(model: str, reason: str) -> None:
    refused_requests().labels(model=model, reason=reason).inc()
