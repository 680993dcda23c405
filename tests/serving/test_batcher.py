"""The dynamic batcher (serving/engine/batcher.py) and the statistics it records (serving/engine/statistics.py),
in-process with a model that records the batches it is given."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serving.engine.batcher import DynamicBatcher, QueuedTooLong
from serving.engine.statistics import ModelStatistics
from tests.serving.fakes import run


class Recording:
    """A model whose outputs identify each image (its first pixel), that can be held on a gate."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a batch has reached the model

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(len(images))
        return {"probabilities": images[:, 0, 0, :2].copy(), "poses": np.zeros((len(images), 2, 3), np.float32)}


def images(first: float, n: int = 1) -> np.ndarray:
    batch = np.zeros((n, 1, 4, 4), np.float32)
    batch[:, 0, 0, 0] = first + np.arange(n)
    return batch


def test_requests_waiting_while_the_model_runs_share_one_batch_and_get_their_own_rows():
    model, stats = Recording(), ModelStatistics("m", "1")
    batcher = DynamicBatcher(model, max_batch_size=8, max_latency_ms=10_000, statistics=stats)

    async def scenario() -> list:
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(images(100)))  # runs alone: the model was idle
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batcher.submit(images(10 * k, n=2))) for k in range(3)]  # 6 images wait
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(first, *rest)

    answers = run(scenario())
    assert model.batches == [1, 6]
    assert answers[0].outputs["probabilities"][:, 0].tolist() == [100]
    for k, answer in enumerate(answers[1:]):
        assert answer.outputs["probabilities"][:, 0].tolist() == [10 * k, 10 * k + 1]  # its own rows, in order
        # it waited in the queue for the first batch, which ran at once: longer than that one waited
        assert answer.batch.size == 6 and answer.queue_ns > answers[0].queue_ns
    summary = stats.as_dict()
    assert (summary["inference_count"], summary["execution_count"]) == (7, 2)
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in summary["batch_stats"]] == [(1, 1), (6, 1)]


def test_a_batch_never_exceeds_the_limit_and_a_request_is_never_split():
    model = Recording()
    batcher = DynamicBatcher(model, max_batch_size=4, max_latency_ms=10_000, statistics=ModelStatistics("m", "1"))

    async def scenario() -> None:
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(images(0)))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(batcher.submit(images(0, n=3))) for _ in range(3)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(first, *waiting)

    run(scenario())
    assert model.batches == [1, 3, 3, 3]


def test_a_request_past_the_latency_budget_is_shed_and_the_rest_still_run():
    model = Recording()
    batcher = DynamicBatcher(model, max_batch_size=8, max_latency_ms=30, statistics=ModelStatistics("m", "1"))

    async def scenario() -> tuple:
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(images(0)))
        await asyncio.sleep(0.01)
        late = asyncio.create_task(batcher.submit(images(1)))  # waits > 30 ms behind the held batch
        await asyncio.sleep(0.1)
        model.gate.set()
        return await asyncio.gather(first, late, return_exceptions=True)

    first, late = run(scenario())
    assert isinstance(late, QueuedTooLong) and first.outputs["probabilities"].shape == (1, 2)
    assert model.batches == [1]
    again = run(batcher.submit(images(5)))  # an idle batcher starts again on the next request
    assert again.outputs["probabilities"][0, 0] == 5


def test_a_failing_batch_fails_each_of_its_requests_and_not_the_next():
    calls = []

    def flaky(batch: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return {"probabilities": batch[:, 0, 0, :2]}

    batcher = DynamicBatcher(flaky, 8, 10_000, ModelStatistics("m", "1"))
    with pytest.raises(RuntimeError, match="out of memory"):
        run(batcher.submit(images(0)))
    assert run(batcher.submit(images(3))).outputs["probabilities"][0, 0] == 3


def test_statistics_count_requests_and_call_their_hooks():
    seen = []
    stats = ModelStatistics("m", "7", on_request=lambda s, ok, total, queue, compute: seen.append((ok, compute)))
    batcher = DynamicBatcher(Recording(), 8, 10_000, stats)
    answer = run(batcher.submit(images(0, n=2)))
    stats.record_request(True, 5_000, answer.queue_ns, answer.batch)
    stats.record_request(False, 2_000)
    summary = stats.as_dict()
    inference = summary["inference_stats"]
    assert (summary["name"], summary["version"]) == ("m", "7")
    assert inference["success"] == {"count": 1, "ns": 5_000} and inference["fail"] == {"count": 1, "ns": 2_000}
    assert inference["compute_infer"]["count"] == 1 and inference["compute_infer"]["ns"] == answer.batch.compute_infer
    assert summary["last_inference"] > 0 and seen == [(True, answer.batch.compute_infer), (False, 0)]


def test_a_request_larger_than_a_batch_still_runs_alone():
    model = Recording()
    batcher = DynamicBatcher(model, max_batch_size=2, max_latency_ms=10_000, statistics=ModelStatistics("m", "1"))
    assert run(batcher.submit(images(0, n=5))).outputs["probabilities"].shape == (5, 2)
    assert model.batches == [5]


def test_a_queue_delay_gathers_requests_that_arrive_apart_and_a_full_batch_ends_it_early():
    model = Recording()
    batcher = DynamicBatcher(model, max_batch_size=4, max_latency_ms=10_000, statistics=ModelStatistics("m", "1"),
                             queue_delay_ms=200)

    async def apart() -> None:  # three requests 20 ms apart: without the delay the first runs alone
        tasks = []
        for k in range(3):
            tasks.append(asyncio.create_task(batcher.submit(images(k))))
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)

    run(apart())
    assert model.batches == [3]

    # A full batch ends the wait: with a delay of ten minutes, four requests (the maximum) still run
    # as one batch; were the batcher to wait out the delay, the hang guard would fail the test.
    patient = DynamicBatcher(model, max_batch_size=4, max_latency_ms=1_200_000, statistics=ModelStatistics("m", "1"),
                             queue_delay_ms=600_000)

    async def full() -> None:
        await asyncio.wait_for(asyncio.gather(*(patient.submit(images(k)) for k in range(4))), timeout=60)

    run(full())
    assert model.batches == [3, 4]


def test_a_request_whose_client_went_away_is_dropped_before_its_batch_runs():
    model = Recording()
    batcher = DynamicBatcher(model, max_batch_size=8, max_latency_ms=10_000, statistics=ModelStatistics("m", "1"))

    async def scenario() -> list:
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(images(100)))  # runs alone, held on the gate
        while not model.entered.is_set():  # the model is busy with it: the next ones queue
            await asyncio.sleep(0.001)
        queued = [asyncio.create_task(batcher.submit(images(10 * k))) for k in range(3)]
        await asyncio.sleep(0)  # they reach the queue
        queued[1].cancel()  # that client disconnected while it waited
        model.gate.set()
        return await asyncio.gather(first, queued[0], queued[2])

    answers = run(scenario())
    assert model.batches == [1, 2]  # the cancelled request never reached the model
    assert [a.outputs["probabilities"][:, 0].tolist() for a in answers] == [[100], [0], [20]]
