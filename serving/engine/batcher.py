"""Dynamic batching for one served model version, the way Triton's dynamic batcher does it: requests
wait in a queue; whenever the model is free, everything waiting (up to the largest batch) runs as one
ONNX Runtime call, so batches grow exactly as fast as requests arrive while the model is busy, and a
lone request on an idle server runs at once instead of being held for batch-mates.

Every protocol's requests to a model version share its batcher: the BentoML APIs, OIP REST and gRPC.
It is ours rather than BentoML's adaptive batcher because the model set changes while serving
(serving/engine/repository.py loads and unloads versions; BentoML's batchers are fixed when the service class
is declared) and because the statistics extension needs each request's queue time and each batch's
compute time (serving/engine/statistics.py), which BentoML's batcher does not expose.

With a queue delay (CAPSNET_MAX_QUEUE_DELAY_MS, Triton's max_queue_delay_microseconds; default 0), a
batch that is not full waits until its oldest request has waited that long, for batch-mates: useful
when requests arrive just too far apart to meet (a very fast model, slow clients), at that cost in
latency; under load batches fill without it.

A request that waited longer than the latency budget (CAPSNET_MAX_LATENCY_MS) when its turn comes
is not run: `QueuedTooLong` (the service answers 503 + Retry-After). One batch runs at a time per
model version, in a worker thread (ONNX Runtime releases the GIL), so the event loop keeps accepting.
The drain task exists only while requests wait: an unloaded version's batcher finishes the requests
already queued and then holds nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.engine.statistics import BatchTimes, ModelStatistics

Outputs = dict[str, np.ndarray]
Run = Callable[[np.ndarray], Outputs]  # images [B, 1, S, S] -> {output name: [B, ...]}


class QueuedTooLong(Exception):
    """The request waited past the latency budget before a batch had room for it."""


@dataclass
class Answer:
    """One request's share of a batch, and what that batch cost."""

    outputs: Outputs
    queue_ns: int
    batch: BatchTimes


@dataclass
class _Waiting:
    images: np.ndarray
    future: asyncio.Future
    enqueued_ns: int


class DynamicBatcher:
    """Merges concurrent `submit` calls for one model version into batches of at most `max_batch_size`
    images (a request is never split), running `run` on each; records into `statistics`."""

    def __init__(self, run: Run, max_batch_size: int, max_latency_ms: float, statistics: ModelStatistics,
                 queue_delay_ms: float = 0.0) -> None:
        self.run, self.max_batch_size, self.statistics = run, max_batch_size, statistics
        self.max_wait_ns = int(max_latency_ms * 1e6)
        self.queue_delay_ns = int(queue_delay_ms * 1e6)
        self.queue: deque[_Waiting] = deque()
        self.task: asyncio.Task | None = None
        self.full = asyncio.Event()  # set when the queue holds a full batch: the delay ends early

    async def submit(self, images: np.ndarray) -> Answer:
        """Validated images [N, 1, S, S], N <= max_batch_size -> this request's outputs ({name: [N, ...]}).
        Raises QueuedTooLong, or whatever the model run raised for the batch."""
        future = asyncio.get_running_loop().create_future()
        self.queue.append(_Waiting(images, future, time.perf_counter_ns()))
        if self.queue_delay_ns and self._queued_images() >= self.max_batch_size:
            self.full.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self.queue:
            await self._wait_for_batch_mates()
            batch = self._next_batch()
            if batch:
                await self._run(batch)

    async def _wait_for_batch_mates(self) -> None:
        """With a queue delay: until the oldest request has waited that long, or a batch is full."""
        if not self.queue_delay_ns:
            return
        left = self.queue[0].enqueued_ns + self.queue_delay_ns - time.perf_counter_ns()
        if left > 0 and self._queued_images() < self.max_batch_size:
            self.full.clear()
            try:
                await asyncio.wait_for(self.full.wait(), left / 1e9)
            except TimeoutError:
                pass

    def _queued_images(self) -> int:
        return sum(len(w.images) for w in self.queue)

    def _next_batch(self) -> list[_Waiting]:
        """The waiting requests that fit one batch, oldest first; those past the budget are answered
        QueuedTooLong, those whose caller went away are dropped."""
        batch: list[_Waiting] = []
        size, now = 0, time.perf_counter_ns()
        # at least one request per batch, however large (validation keeps each within max_batch_size)
        while self.queue and (not batch or size + len(self.queue[0].images) <= self.max_batch_size):
            waiting = self.queue.popleft()
            if waiting.future.done():  # cancelled: the client disconnected
                continue
            if now - waiting.enqueued_ns > self.max_wait_ns:
                waiting.future.set_exception(QueuedTooLong())
                continue
            batch.append(waiting)
            size += len(waiting.images)
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        started = time.perf_counter_ns()
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([w.images for w in batch])
            assembled = time.perf_counter_ns()
            outputs = await asyncio.to_thread(self.run, images)
            ran = time.perf_counter_ns()
            answers, start = [], 0
            for waiting in batch:
                n = len(waiting.images)
                answers.append({name: array[start:start + n] for name, array in outputs.items()})
                start += n
            times = BatchTimes(len(images), assembled - started, ran - assembled, time.perf_counter_ns() - ran)
        except Exception as e:  # the whole batch failed: every request in it gets the error
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(e)
            return
        self.statistics.record_batch(times)
        for waiting, outputs_of_one in zip(batch, answers, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(Answer(outputs_of_one, started - waiting.enqueued_ns, times))
