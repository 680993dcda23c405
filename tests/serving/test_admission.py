"""Admission control (serving/engine/admission.py) in-process, on each front end it guards: the BentoML APIs'
ASGI gate (serving/bento/middleware.py), OIP REST (serving/oip/rest.py) and OIP gRPC (serving/oip/grpc_service.py).
A model whose inference waits on an event makes "the queue is full" exact instead of a race."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import httpx
import numpy as np
import pytest

from serving.asgi import read_body, replaying
from serving.bento.admission_gate import AdmissionGate, model_named_in
from serving.bento.logs import ClientErrorsAsOneLine
from serving.engine.admission import Admission
from serving.engine.repository import ModelRepository
from serving.errors import PAST_BUDGET, QUEUE_FULL, Overloaded
from serving.oip.grpc_service import InferenceServicer
from serving.oip.rest import OipRestApp
from tests.serving.fakes import (
    Aborted,
    Blocking,
    FakeContext,
    FakeVersion,
    dataplane,
    grpc_request,
    oip_request,
    run,
    until,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_admits_up_to_the_limit_then_refuses_with_the_setting_named():
    admission = Admission(max_queue=2, retry_after_s=3)
    with admission.admit("a"), admission.admit("a"):
        with pytest.raises(Overloaded) as refused:
            with admission.admit("a"):
                pass
        with admission.admit("b"):  # another model has its own places
            assert admission.snapshot()["waiting"] == {"a": 2, "b": 1}
    assert refused.value.reason == QUEUE_FULL and refused.value.retry_after_s == 3
    assert "CAPSNET_MAX_QUEUE" in str(refused.value) and "retry after 3 s" in str(refused.value)
    with admission.admit("a"):  # places come back when a request is answered, also after an error
        pass
    with pytest.raises(RuntimeError), admission.admit("a"):
        raise RuntimeError("inference failed")
    assert admission.snapshot() == {"max_queue": 2, "retry_after_s": 3, "waiting": {},
                                    "refused": {"a": {QUEUE_FULL: 1}}}


def test_refusals_are_counted_and_summarised_once_per_interval(caplog):
    clock, seen = Clock(), []
    admission = Admission(1, 1, on_refused=lambda model, reason: seen.append((model, reason)), clock=clock,
                          summary_interval_s=10)
    with caplog.at_level(logging.WARNING, logger="serving.engine.admission"):
        for i in range(500):
            clock.now = i * 0.01  # 500 refusals within 5 s: no line yet
            admission.refuse("m", QUEUE_FULL if i % 5 else PAST_BUDGET)
        assert caplog.records == []
        clock.now = 10.5
        admission.refuse("m", QUEUE_FULL)  # the window is over: one line for all 501
    assert len(seen) == 501 and seen[0] == ("m", PAST_BUDGET)
    [line] = [r.getMessage() for r in caplog.records]
    assert "refused 501 requests" in line and "401 queue full (CAPSNET_MAX_QUEUE)" in line
    assert "100 past latency budget (CAPSNET_MAX_LATENCY_MS)" in line
    assert admission.refuse("m", PAST_BUDGET, count=False).reason == PAST_BUDGET  # already counted elsewhere
    assert admission.snapshot()["refused"] == {"m": {QUEUE_FULL: 401, PAST_BUDGET: 100}}


def test_the_model_is_read_from_the_raw_body_without_parsing_it():
    assert model_named_in(b'{"images": [[[0.5]]], "model" : "capsnet-multimnist"}', multipart=False) == \
        "capsnet-multimnist"
    assert model_named_in(b'{"images": [[[0.5]]]}', multipart=False) is None
    form = (b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
            b'Content-Type: image/png\r\n\r\n\x89PNG...\r\n--b\r\n'
            b'Content-Disposition: form-data; name="model"\r\n\r\ncapsnet-fashion-mnist\r\n--b--\r\n')
    assert model_named_in(form, multipart=True) == "capsnet-fashion-mnist"


def test_the_gate_reads_at_most_its_limit_and_hands_on_the_rest():
    async def scenario() -> list[bytes]:
        chunks = iter([b"aaaa", b"bbbb", b"cccc"])

        async def receive() -> dict:
            chunk = next(chunks)
            return {"type": "http.request", "body": chunk, "more_body": chunk != b"cccc"}

        messages = iter([{"type": "http.request", "body": b"x", "more_body": True},
                         {"type": "http.request", "body": b"y", "more_body": False},
                         {"type": "http.disconnect"}])

        async def first() -> dict:
            return next(messages)

        whole, more = await read_body(first)
        again = replaying(first, whole, more)
        # the body once, then what the client sends next: an app waiting for the disconnect (a
        # streamed FileResponse) must get it, not the body again in a busy loop
        assert [await again(), await again()] == [{"type": "http.request", "body": b"xy", "more_body": False},
                                                  {"type": "http.disconnect"}]
        head, more = await read_body(receive, limit=5)
        assert head == b"aaaabbbb" and more  # stopped once past the limit
        replay = replaying(receive, head, more)
        seen = [await replay(), await replay()]
        assert [m["more_body"] for m in seen] == [True, False]
        return [m["body"] for m in seen]

    assert run(scenario()) == [b"aaaabbbb", b"cccc"]


def test_oip_rest_refuses_past_the_limit_with_503_and_retry_after_then_serves_again():
    async def scenario() -> None:
        model, admission = Blocking(), Admission(max_queue=2, retry_after_s=2)
        app = OipRestApp(dataplane(model, admission=admission), 1 << 20)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://oip") as client:
            held = [asyncio.create_task(client.post("/v2/models/m/infer", json=oip_request())) for _ in range(2)]
            await until(lambda: model.calls == 2)
            refused = await client.post("/v2/models/m/infer", json=oip_request())
            assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
            assert "CAPSNET_MAX_QUEUE" in refused.json()["error"] and "overloaded" in refused.json()["error"]
            assert model.calls == 2  # refused before its body was parsed or queued
            model.release.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            again = await client.post("/v2/models/m/infer", json=oip_request())
            assert again.status_code == 200 and again.json()["outputs"][0]["shape"] == [1, 10]

    run(scenario())


def test_oip_rest_answers_a_shed_request_503_and_deep_json_400():
    async def shed(images: np.ndarray) -> dict[str, np.ndarray]:
        raise admission.refuse("m", PAST_BUDGET)

    admission = Admission(4, 1)
    app = OipRestApp(dataplane(shed, admission=admission), 4 << 20)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://oip") as client:
            answer = await client.post("/v2/models/m/infer", json=oip_request())
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
            assert "CAPSNET_MAX_LATENCY_MS" in answer.json()["error"]
            deep = await client.post("/v2/models/m/infer", content=b"[" * 100_000 + b"]" * 100_000)
            assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]

    run(scenario())
    assert admission.snapshot()["refused"] == {"m": {PAST_BUDGET: 1}}


def test_grpc_refuses_past_the_limit_with_unavailable_and_retry_metadata():
    async def scenario() -> None:
        model = Blocking()
        servicer = InferenceServicer(dataplane(model, admission=Admission(1, 2)))
        held = asyncio.create_task(servicer.ModelInfer(grpc_request(), FakeContext()))
        await until(lambda: model.calls == 1)
        context = FakeContext()
        with pytest.raises(Aborted) as refused:
            await servicer.ModelInfer(grpc_request(), context)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE and "CAPSNET_MAX_QUEUE" in refused.value.details
        assert dict(context.trailing) == {"retry-after": "2", "grpc-retry-pushback-ms": "2000"}
        model.release.set()
        assert len((await held).raw_output_contents) == 2
        assert len((await servicer.ModelInfer(grpc_request(), FakeContext())).raw_output_contents) == 2

    run(scenario())


@pytest.mark.parametrize("raw_contents", [2, 3])
def test_grpc_rejects_more_raw_contents_than_inputs(raw_contents):
    model = Blocking()
    servicer = InferenceServicer(dataplane(model))
    with pytest.raises(Aborted) as rejected:
        run(servicer.ModelInfer(grpc_request(raw_contents), FakeContext()))
    assert rejected.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{raw_contents} raw_input_contents for 1 input" in rejected.value.details and model.calls == 0


def inner_app(status: int, model: Blocking | None = None):
    """An ASGI app standing in for BentoML's: answers `status` (after `model` is released)."""
    async def app(scope, receive, send) -> None:
        body = await receive()
        if model is not None:
            await model(np.zeros((1, 1, 28, 28), np.float32))
        answer = json.dumps({"error": "An unexpected error has occurred"} if status >= 400
                            else {"echo": len(body["body"])}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
    return app


def served(*names: str) -> ModelRepository:
    """A repository serving fake versions of `names` (the default: the first by name)."""
    return ModelRepository.of([FakeVersion(name, "1", None) for name in names])


def test_the_bentoml_gate_counts_the_model_the_body_names_and_refuses_before_the_app():
    async def scenario() -> None:
        model, admission = Blocking(), Admission(1, 1)
        gate = AdmissionGate(inner_app(200, model), admission, served("a", "b"), {"/classify": None, "/infer_b": "b"})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(gate), base_url="http://bento") as client:
            held = asyncio.create_task(client.post("/classify", json={"images": [], "model": "b"}))
            await until(lambda: model.calls == 1)
            assert (await client.post("/infer_b", json=[])).status_code == 503  # b is full
            refused = await client.post("/classify", json={"images": [], "model": "b"})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "model b already has 1 requests waiting" in refused.json()["error"]
            model.release.set()  # a, the default, was free all along:
            assert (await client.post("/classify", json={"images": []})).status_code == 200
            assert (await held).json() == {"echo": len(b'{"images":[],"model":"b"}')}  # the body replayed whole
            assert model.calls == 2
            assert (await client.get("/classify")).status_code == 200  # only POSTs are gated

    run(scenario())


def test_a_made_up_model_name_counts_against_the_default_model():
    async def scenario() -> None:
        model, admission = Blocking(), Admission(1, 1)
        gate = AdmissionGate(inner_app(200, model), admission, served("a", "b"), {"/classify": None})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(gate), base_url="http://bento") as client:
            held = asyncio.create_task(client.post("/classify", json={"images": [], "model": "made-up"}))
            await until(lambda: model.calls == 1)
            assert admission.snapshot()["waiting"] == {"a": 1}  # no counter for a name nobody serves
            model.release.set()
            assert (await held).status_code == 200
        assert admission.snapshot()["waiting"] == {}

    run(scenario())


def test_a_request_shed_past_the_budget_is_answered_503_with_retry_after_and_counted_once():
    from types import SimpleNamespace

    from serving.bento.answers import answered

    async def shed():
        raise admission.refuse("a", PAST_BUDGET)

    admission = Admission(4, 1)
    ctx = SimpleNamespace(response=SimpleNamespace(status_code=200, headers={}), request=None)
    answer = run(answered(ctx, shed()))
    assert answer.status_code == 503 == ctx.response.status_code and answer.headers["retry-after"] == "1"
    assert "CAPSNET_MAX_LATENCY_MS" in json.loads(answer.body)["error"]
    assert admission.snapshot()["refused"] == {"a": {PAST_BUDGET: 1}}  # counted where it was shed, once


def test_a_shed_request_leaves_no_traceback_but_a_server_fault_keeps_it():
    from bentoml.exceptions import ServiceUnavailable

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/classify", "POST"),
                                 (type(exc), exc, None))

    keep = ClientErrorsAsOneLine()
    assert keep.filter(record(ServiceUnavailable("process is overloaded"))) is False
    fault = record(RuntimeError("bug"))
    assert keep.filter(fault) is True and fault.exc_info is not None and fault.levelno == logging.ERROR
