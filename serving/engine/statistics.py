"""Per model version inference statistics, in the shape of the Open Inference Protocol's statistics
extension (Triton's `ModelStatistics`), recorded by the batcher (serving/engine/batcher.py) and the model's
`infer` (serving/handlers/classify.py) for every protocol's requests, and mirrored onto /metrics as Triton's
`nv_inference_*` series (serving/bento/prometheus.py).

The meanings follow Triton's:
- success / fail: requests (count) and their whole time in the model, queue to answer (ns);
- queue, compute_input, compute_infer, compute_output: per successful request, the time it waited
  for its batch and its batch's time to assemble the input, run ONNX Runtime and split the output
  (a request is charged its whole batch's compute time, as Triton does);
- inference_count: images inferred (the batch axis); execution_count: ONNX Runtime runs (batches);
  their ratio is the mean batch size;
- batch_stats: per batch size, how many runs and their compute times;
- last_inference: milliseconds since the epoch of the last successful request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
COMPUTE = ("compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchTimes:
    """What one ONNX Runtime run of a batch cost, in nanoseconds."""

    size: int
    compute_input: int
    compute_infer: int
    compute_output: int


@dataclass
class ModelStatistics:
    """The counters of one served model version. Thread-safe; `on_request` / `on_batch` (metrics) are
    called with each record."""

    name: str
    version: str
    # (self, ok, total_ns, queue_ns, compute_infer_ns): the request's own figures, as inference_stats counts them
    on_request: Callable[[ModelStatistics, bool, int, int, int], None] | None = None
    on_batch: Callable[[ModelStatistics, BatchTimes], None] | None = None
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    durations: dict[str, Duration] = field(default_factory=lambda: {k: Duration() for k in DURATIONS})
    batches: dict[int, dict[str, Duration]] = field(default_factory=dict)  # batch size -> compute durations
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_batch(self, times: BatchTimes) -> None:
        """One run of `times.size` images."""
        with self._lock:
            self.inference_count += times.size
            self.execution_count += 1
            per_size = self.batches.setdefault(times.size, {k: Duration() for k in COMPUTE})
            for key in COMPUTE:
                per_size[key].add(getattr(times, key))
        if self.on_batch is not None:
            self.on_batch(self, times)

    def record_request(self, ok: bool, total_ns: int, queue_ns: int = 0, batch: BatchTimes | None = None) -> None:
        """One request: answered (`ok`) or not, its time in the model, and for an answered one its wait
        and its batch's compute times."""
        with self._lock:
            if not ok:
                self.durations["fail"].add(total_ns)
            else:
                self.durations["success"].add(total_ns)
                self.durations["queue"].add(queue_ns)
                for key in COMPUTE:
                    self.durations[key].add(getattr(batch, key) if batch else 0)
                self.last_inference_ms = time.time_ns() // 1_000_000
        if self.on_request is not None:
            self.on_request(self, ok, total_ns, queue_ns, batch.compute_infer if batch else 0)

    def batching(self) -> dict[str, Any]:
        """The batch counters `metadata` reports: runs, images, mean and largest batch."""
        with self._lock:
            return {"batches": self.execution_count, "images": self.inference_count,
                    "mean_batch_size": self.inference_count / self.execution_count if self.execution_count else 0.0,
                    "max_batch_size_seen": max(self.batches, default=0)}

    def as_dict(self) -> dict[str, Any]:
        """Triton's ModelStatistics as JSON (the REST answer; the gRPC message is parsed from it)."""
        with self._lock:
            return {
                "name": self.name, "version": self.version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {**{k: d.as_dict() for k, d in self.durations.items()},
                                    "cache_hit": Duration().as_dict(), "cache_miss": Duration().as_dict()},
                "batch_stats": [{"batch_size": size, **{k: d.as_dict() for k, d in per_size.items()}}
                                for size, per_size in sorted(self.batches.items())],
            }
