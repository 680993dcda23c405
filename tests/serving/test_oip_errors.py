"""The Open Inference Protocol's error cases in-process: the REST app and the gRPC servicer need no
server. Every malformed request is a 4xx / INVALID_ARGUMENT / NOT_FOUND naming the problem, and the
model is never called for it."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from serving.admission import Admission
from serving.grpc_server import InferenceServicer
from serving.oip_http import OipHttpApp
from tests.serving.fakes import Aborted, Blocking, FakeContext, grpc_request, run, served


@pytest.fixture
def model() -> Blocking:
    called = Blocking()
    called.release.set()
    return called


def rest(model: Blocking, method: str, path: str, **request) -> httpx.Response:
    app = OipHttpApp(served(model), lambda: True, 8, 1 << 20, Admission(4, 1))

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://oip") as client:
            return await client.request(method, path, **request)

    return run(call())


def binary_body(header: dict, data: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    return encoded + data, {"Inference-Header-Content-Length": str(len(encoded))}


PIXELS = np.full((1, 1, 28, 28), 0.5, "<f4").tobytes()


@pytest.mark.parametrize("header, data, length, message", [
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                  "parameters": {"binary_data_size": 100}}]}, PIXELS, None, "binary_data_size 100 does not match"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 1, 28, 28],
                  "parameters": {"binary_data_size": len(PIXELS)}}]}, PIXELS, None, "needs 6272"),
    ({"inputs": []}, b"", "999999", "is not within"),
    ({"inputs": []}, b"", "many", "not a JSON inference request"),
])
def test_rest_binary_tensor_errors_are_400(model, header, data, length, message):
    body, headers = binary_body(header, data)
    if length is not None:
        headers["Inference-Header-Content-Length"] = length
    answer = rest(model, "POST", "/v2/models/m/infer", content=body, headers=headers)
    assert answer.status_code == 400 and message in answer.json()["error"]
    assert model.calls == 0


@pytest.mark.parametrize("path, status", [("/v2/models/nope/infer", 404), ("/v2/models/m/versions/2/infer", 404),
                                          ("/v2/models/m/config", 405)])
def test_rest_unknown_models_versions_and_methods(model, path, status):
    answer = rest(model, "POST", path, json={})
    assert answer.status_code == status and answer.json()["error"]


def grpc_abort(call) -> Aborted:
    with pytest.raises(Aborted) as aborted:
        run(call)
    return aborted.value


def test_grpc_wrong_input_name_unknown_model_and_version(model):
    servicer = InferenceServicer(served(model), lambda: True, 8, Admission(4, 1))
    request = grpc_request()
    request.inputs[0].name = "pixels"
    wrong = grpc_abort(servicer.ModelInfer(request, FakeContext()))
    assert wrong.code == grpc.StatusCode.INVALID_ARGUMENT and "named 'image'" in wrong.details
    versioned = grpc_request()
    versioned.model_version = "2"
    assert grpc_abort(servicer.ModelInfer(versioned, FakeContext())).code == grpc.StatusCode.NOT_FOUND
    for call in (servicer.ModelMetadata(pb.ModelMetadataRequest(name="nope"), FakeContext()),
                 servicer.ModelConfig(pb.ModelConfigRequest(name="nope"), FakeContext())):
        unknown = grpc_abort(call)
        assert unknown.code == grpc.StatusCode.NOT_FOUND and "'m' version '1'" in unknown.details
    assert model.calls == 0
    answer = asyncio.run(servicer.ModelInfer(grpc_request(), FakeContext()))  # and it still answers
    assert len(answer.raw_output_contents) == 2 and model.calls == 1
