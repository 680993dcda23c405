"""The Open Inference Protocol's error cases in-process: the REST app and the gRPC servicer need no
server. Every malformed request is a 4xx / INVALID_ARGUMENT / NOT_FOUND naming the problem, and the
model is never called for it."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from serving.engine.policies import StoredVersion
from serving.oip.grpc_service import InferenceServicer
from serving.oip.rest import OipRestApp
from tests.serving.fakes import CONTROL_KEY, Aborted, Blocking, FakeContext, dataplane, grpc_request, oip_request, run


@pytest.fixture
def model() -> Blocking:
    called = Blocking()
    called.release.set()
    return called


def call(app: OipRestApp, method: str, path: str, **request) -> httpx.Response:
    """One request to the OIP REST app in-process."""
    async def one() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://oip") as client:
            return await client.request(method, path, **request)

    return run(one())


def rest(model: Blocking, method: str, path: str, **request) -> httpx.Response:
    return call(OipRestApp(dataplane(model), 1 << 20), method, path, **request)


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
    servicer = InferenceServicer(dataplane(model))
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


@pytest.mark.parametrize("path, request_body, status, message", [
    ("/v2/repository/models/m/load", {}, 403, "CAPSNET_MODEL_CONTROL=explicit"),
    ("/v2/repository/models/m/unload", {}, 403, "CAPSNET_MODEL_CONTROL=explicit"),
    ("/v2/repository/models/m/reload", {}, 404, "the repository has /index"),
    ("/v2/models/nope/stats", None, 404, "unknown model 'nope'"),
])
def test_rest_repository_and_statistics_errors(model, path, request_body, status, message):
    method = "GET" if request_body is None else "POST"
    answer = rest(model, method, path, **({} if request_body is None else {"json": request_body}))
    assert answer.status_code == status and message in answer.json()["error"]


@pytest.mark.parametrize("config, message", [("{not json", "not JSON"), ('["x"]', "JSON object"),
                                             ('{"version_policy": {"newest": {}}}', "unknown version policy"),
                                             ('{"version_policy": {"specific": {"versions": [9]}}}',
                                              "9 not registered")])
def test_a_bad_load_config_is_a_400_and_changes_nothing(config, message):
    plane = dataplane(None, control=True)
    plane.repository.list_store = lambda: [StoredVersion("m", "1", datetime(2026, 1, 1))]
    answer = call(OipRestApp(plane, 1 << 20), "POST", "/v2/repository/models/m/load",
                  json={"parameters": {"config": config}}, headers={"capsnet-control-key": CONTROL_KEY})
    assert answer.status_code == 400 and message in answer.json()["error"] and plane.repository.served == {}


@pytest.mark.parametrize("output, count, message", [("poses", 3, "applies to output 'probabilities'"),
                                                    ("probabilities", 0, "count >= 1")])
def test_classification_of_the_wrong_output_is_refused_before_the_model_runs(model, output, count, message):
    request = {**oip_request(), "outputs": [{"name": output, "parameters": {"classification": count}}]}
    answer = rest(model, "POST", "/v2/models/m/infer", json=request)
    assert answer.status_code == 400 and message in answer.json()["error"] and model.calls == 0
    grpc_request_ = grpc_request()
    grpc_request_.outputs.add(name=output).parameters["classification"].int64_param = count
    servicer = InferenceServicer(dataplane(model))
    assert grpc_abort(servicer.ModelInfer(grpc_request_, FakeContext())).code == grpc.StatusCode.INVALID_ARGUMENT
    assert model.calls == 0


def test_classification_strings_in_json_and_binary_and_the_grpc_control_errors(model):
    request = {**oip_request(2), "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
    answer = rest(model, "POST", "/v2/models/m/infer", json=request).json()["outputs"][0]
    assert answer["datatype"] == "BYTES" and answer["shape"] == [2, 2]
    assert answer["data"][:2] == ["0.100000:0:0", "0.100000:1:1"]  # ties: the lower index first, as argsort
    servicer = InferenceServicer(dataplane(model))
    refused = grpc_abort(servicer.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m"), FakeContext()))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION and "CAPSNET_MODEL_CONTROL" in refused.details
    unknown = grpc_abort(servicer.ModelStatistics(pb.ModelStatisticsRequest(name="nope"), FakeContext()))
    assert unknown.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("key, status, code, message", [
    (None, 401, grpc.StatusCode.UNAUTHENTICATED, "needs the operator's key in the 'capsnet-control-key' header"),
    ("guess", 403, grpc.StatusCode.PERMISSION_DENIED, "not this server's control key"),
])
def test_load_and_unload_without_the_operators_key_are_refused_on_both_transports_and_change_nothing(
        key, status, code, message, caplog):
    plane = dataplane(Blocking(), control=True)
    plane.repository.list_store = lambda: [StoredVersion("m", "1", datetime(2026, 1, 1))]
    served = dict(plane.repository.served)
    app = OipRestApp(plane, 1 << 20)
    headers = {} if key is None else {"capsnet-control-key": key}

    servicer = InferenceServicer(plane)
    metadata = () if key is None else (("capsnet-control-key", key),)
    with caplog.at_level("WARNING"):
        for action in ("unload", "load"):
            answer = call(app, "POST", f"/v2/repository/models/m/{action}", headers=headers)
            assert answer.status_code == status and message in answer.json()["error"]
        for rpc, request in ((servicer.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="m")),
                             (servicer.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="m"))):
            refused = grpc_abort(rpc(request, FakeContext(metadata)))
            assert refused.code == code and message in refused.details
    assert plane.repository.served == served  # nothing changed
    assert len(caplog.records) == 4 and CONTROL_KEY not in caplog.text  # one line each, the key never logged


def test_the_operators_key_unloads_on_rest_and_loads_on_grpc():
    plane = dataplane(Blocking(), control=True)
    plane.repository.list_store = lambda: [StoredVersion("m", "1", datetime(2026, 1, 1))]
    version = plane.repository.served["m"][0]
    plane.repository.open_version = lambda stored: version  # what a load opens again
    unloaded = call(OipRestApp(plane, 1 << 20), "POST", "/v2/repository/models/m/unload",
                    headers={"capsnet-control-key": CONTROL_KEY})
    assert unloaded.status_code == 200 and not plane.repository.serves("m")
    servicer = InferenceServicer(plane)
    run(servicer.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m"),
                                     FakeContext((("capsnet-control-key", CONTROL_KEY),))))
    assert plane.repository.serves("m")


def test_oip_rest_refuses_a_body_over_the_limit_with_413_before_the_model_runs(model):
    answer = call(OipRestApp(dataplane(model), 1000), "POST", "/v2/models/m/infer", json=oip_request())  # ~3 kB
    assert answer.status_code == 413 and "over 1000 bytes (CAPSNET_MAX_REQUEST_BYTES)" in answer.json()["error"]
    assert model.calls == 0


async def failing_model(images: np.ndarray) -> dict[str, np.ndarray]:
    raise RuntimeError("the ONNX Runtime session broke")


def test_a_failing_model_is_a_500_and_internal_with_a_generic_message_and_the_traceback_logged(caplog):
    with caplog.at_level("WARNING"):
        answer = rest(failing_model, "POST", "/v2/models/m/infer", json=oip_request())
        aborted = grpc_abort(InferenceServicer(dataplane(failing_model)).ModelInfer(grpc_request(), FakeContext()))
    assert answer.status_code == 500 and answer.json() == {"error": "inference failed; see the server log"}
    assert aborted.code == grpc.StatusCode.INTERNAL and aborted.details == "inference failed; see the server log"
    assert "session broke" not in answer.text + aborted.details  # a fault's details stay in the log
    assert sum("Traceback" in (r.exc_text or "") or r.exc_info is not None for r in caplog.records) == 2


def test_a_load_whose_export_cannot_be_opened_fails_on_both_transports_and_keeps_what_served(caplog):
    plane = dataplane(Blocking(), control=True)
    plane.repository.list_store = lambda: [StoredVersion("m", "2", datetime(2026, 1, 2))]
    served = dict(plane.repository.served)

    def broken(stored: StoredVersion) -> None:
        raise OSError(f"cannot open the export of {stored.name}:{stored.version}")

    plane.repository.open_version = broken
    with caplog.at_level("WARNING"):
        answer = call(OipRestApp(plane, 1 << 20), "POST", "/v2/repository/models/m/load",
                      headers={"capsnet-control-key": CONTROL_KEY})
        aborted = grpc_abort(InferenceServicer(plane).RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="m"), FakeContext((("capsnet-control-key", CONTROL_KEY),))))
    assert answer.status_code == 500 and aborted.code == grpc.StatusCode.INTERNAL
    assert plane.repository.served == served  # the version that served still serves
    assert "cannot open the export of m:2" in caplog.text  # the cause is in the log


def test_the_served_model_config_names_the_precision_it_runs_in(model):
    config = dataplane(model).model_config("m", "")
    assert config.parameters["precision"].string_value == "fp32"
