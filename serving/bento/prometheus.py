"""Our Prometheus series on BentoML's /metrics, beside its own: refused requests, and Triton's per-model
`nv_inference_*` series (labels `model`, `version`), so a Triton dashboard reads them unchanged.

Created on first use, not at import: BentoML's workers set PROMETHEUS_MULTIPROC_DIR after the service
module is imported, and a series created before that would never reach /metrics (the reason BentoML's
own `bentoml.metrics` defers its import too).

The nv_inference_* series are monotonic totals under Triton's exact names. prometheus_client would add
`_total` to a Counter's name, so they are Gauges that only ever grow (summed over live workers):
`rate()` and `increase()` work on them as on Triton's counters; only the `# TYPE` line says gauge.
"""

from __future__ import annotations

import functools
from typing import Any

from serving.engine.statistics import BatchTimes, ModelStatistics

# name -> help; each labelled model, version
TRITON_SERIES = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests (shed past the latency budget, or "
                                    "failed in the model), all batch sizes",
    "nv_inference_count": "Number of inferences performed (images; a batch of N counts N)",
    "nv_inference_exec_count": "Number of model executions performed (batches)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds (queue to answer)",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
}


@functools.cache
def refused_requests() -> Any:
    """capsnet_requests_refused_total{model, reason}: requests answered 503 / UNAVAILABLE because the
    model was full (reason "queue full") or the request waited past the latency budget."""
    import prometheus_client

    return prometheus_client.Counter("capsnet_requests_refused", "Requests refused or shed because the "
                                     "model was overloaded (503 / UNAVAILABLE)", ["model", "reason"])


def count_refused(model: str, reason: str) -> None:
    refused_requests().labels(model=model, reason=reason).inc()


@functools.cache
def triton_series(name: str) -> Any:
    import prometheus_client

    return prometheus_client.Gauge(name, TRITON_SERIES[name], ["model", "version"], multiprocess_mode="livesum")


def _add(name: str, stats: ModelStatistics, amount: float) -> None:
    triton_series(name).labels(model=stats.name, version=stats.version).inc(amount)


def record_request(stats: ModelStatistics, ok: bool, total_ns: int, queue_ns: int, compute_infer_ns: int) -> None:
    """A request's share, as Triton counts it: each request is charged its whole batch's compute time."""
    if not ok:
        _add("nv_inference_request_failure", stats, 1)
        return
    _add("nv_inference_request_success", stats, 1)
    _add("nv_inference_request_duration_us", stats, total_ns / 1000)
    _add("nv_inference_queue_duration_us", stats, queue_ns / 1000)
    _add("nv_inference_compute_infer_duration_us", stats, compute_infer_ns / 1000)


def record_batch(stats: ModelStatistics, times: BatchTimes) -> None:
    _add("nv_inference_count", stats, times.size)
    _add("nv_inference_exec_count", stats, 1)


# what ModelStatistics calls with each record (serving/handlers/classify.py ServedModel.load)
STATISTICS_HOOKS = {"on_request": record_request, "on_batch": record_batch}
