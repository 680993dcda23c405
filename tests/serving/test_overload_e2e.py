"""Overload on a real `bentoml serve`, at small scale (issue 30): a queue of one request per model and a
dozen concurrent clients on each protocol. Every answer is 200 or 503 + Retry-After (gRPC: OK or
UNAVAILABLE), the refusals leave no traceback in the log and are counted on /metrics, and the server
is ready and answers correctly afterwards. The full sweep is a benchmark (benchmarks/overload.py)."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.serving.server import REQUEST_TIMEOUT, ready_server

CLIENTS, ROUNDS, BATCH = 12, 8, 16


@pytest.fixture(scope="module")
def server(registered):
    yield from ready_server({"CAPSNET_MODEL_TAG": str(registered.tag), "CAPSNET_MAX_BATCH_SIZE": str(BATCH),
                             "CAPSNET_MAX_QUEUE": "1", "CAPSNET_RETRY_AFTER_S": "1"})


IMAGES = np.random.default_rng(0).random((BATCH, 1, 28, 28), dtype=np.float32)


async def http_answers(url: str, path: str, **request) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        async def one() -> list[httpx.Response]:
            return [await client.post(path, **request) for _ in range(ROUNDS)]
        return [r for rs in await asyncio.gather(*(one() for _ in range(CLIENTS))) for r in rs]


def check_http(answers: list[httpx.Response]) -> Counter:
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) <= {200, 503} and statuses[503] > 0 and statuses[200] > 0, statuses
    for refused in (r for r in answers if r.status_code == 503):
        assert refused.headers["retry-after"] == "1"
        assert "overloaded" in refused.json()["error"] and "CAPSNET_MAX_QUEUE" in refused.json()["error"]
    return statuses


def test_bentoml_json_api_refuses_with_503_and_retry_after(server, registered):
    check_http(asyncio.run(http_answers(server.url, "/classify", json={"images": IMAGES.tolist()})))


def test_oip_rest_refuses_with_503_and_retry_after(server, registered):
    request = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(IMAGES.shape),
                           "data": IMAGES.reshape(-1).tolist()}]}
    url = f"http://127.0.0.1:{server.oip_port}"
    check_http(asyncio.run(http_answers(url, f"/v2/models/{registered.tag.name}/infer", json=request)))


def test_grpc_refuses_with_unavailable_and_retry_after(server, registered):
    request = pb.ModelInferRequest(model_name=registered.tag.name)
    request.inputs.add(name="image", datatype="FP32", shape=list(IMAGES.shape))
    request.raw_input_contents.append(IMAGES.tobytes())

    async def load() -> list[tuple[grpc.StatusCode, dict]]:
        async def one() -> list[tuple[grpc.StatusCode, dict]]:
            answers = []
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}",
                                                 options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for _ in range(ROUNDS):
                    try:
                        await stub.ModelInfer(request, timeout=REQUEST_TIMEOUT)
                        answers.append((grpc.StatusCode.OK, {}))
                    except grpc.aio.AioRpcError as e:
                        answers.append((e.code(), dict(e.trailing_metadata() or ())))
            return answers
        return [a for answers in await asyncio.gather(*(one() for _ in range(CLIENTS))) for a in answers]

    answers = asyncio.run(load())
    codes = Counter(code for code, _ in answers)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert codes[grpc.StatusCode.UNAVAILABLE] > 0 and codes[grpc.StatusCode.OK] > 0
    assert all(meta.get("retry-after") == "1" for code, meta in answers if code == grpc.StatusCode.UNAVAILABLE)


def test_after_the_overload_the_server_is_healthy_and_left_no_tracebacks(server, registered):
    assert server.get("readyz").status_code == 200
    answer = server.post("classify", json={"images": IMAGES[:2].tolist()})
    assert answer.status_code == 200 and len(answer.json()) == 2
    metrics = server.get("metrics").text
    refused = [line for line in metrics.splitlines() if line.startswith("capsnet_requests_refused_total{")]
    assert refused and sum(float(line.rpartition(" ")[2]) for line in refused) > 0, refused
    log = server.output(tail=10**7)
    assert "Traceback" not in log and "process is overloaded" not in log
