"""The Open Inference Protocol v2 over REST, spoken to by the stock Triton HTTP client (JSON and binary
tensors) against one `bentoml serve` with a digit and a pair model: every route, answers equal to ONNX
Runtime's, and the protocol's errors."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serving.server import REQUEST_TIMEOUT, direct_outputs


@pytest.fixture(scope="module")
def server(oip_server):
    return oip_server


def images_of(side: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(side).random((n, 1, side, side), dtype=np.float32)


def test_health_metadata_and_config_for_every_model(server, registered, registered_pair):
    with server.oip_http() as client:
        assert client.is_server_live() and client.is_server_ready()
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        for model, side in ((registered, 28), (registered_pair, 36)):
            name, version = model.tag.name, model.tag.version
            assert client.is_model_ready(name) and client.is_model_ready(name, model_version=version)
            meta = client.get_model_metadata(name)
            assert meta["versions"] == [version] and meta["inputs"] == [
                {"name": "image", "datatype": "FP32", "shape": [-1, 1, side, side]}]
            config = client.get_model_config(name, model_version=version)
            assert config["name"] == name and config["platform"] == "onnxruntime_onnx"
            assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [1, side, side]
            assert [o["name"] for o in config["output"]] == [o["name"] for o in meta["outputs"]]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_equals_onnx_runtime(server, registered, registered_pair, binary):
    with server.oip_http() as client:
        for model in (registered, registered_pair):
            side = model.info.metadata["model_config"]["image_size"]
            images = images_of(side)
            tensor = httpclient.InferInput("image", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images, binary_data=binary)
            wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "poses")]
            result = client.infer(model.tag.name, [tensor], outputs=wanted, request_id="r1")
            expected = direct_outputs(model, images)
            for name in ("probabilities", "poses"):
                np.testing.assert_allclose(result.as_numpy(name), expected[name], atol=1e-6, rtol=0)
            assert result.get_response()["id"] == "r1"


def test_uint8_pixels_are_images_too(server, registered):
    pixels = (images_of(28, 2) * 255).round().astype(np.uint8)
    with server.oip_http() as client:
        tensor = httpclient.InferInput("image", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels, binary_data=True)
        result = client.infer(registered.tag.name, [tensor])
    expected = direct_outputs(registered, pixels.astype(np.float32) / 255)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6, rtol=0)


def test_errors_follow_the_protocol_and_the_server_keeps_answering(server, registered):
    base = f"http://127.0.0.1:{server.oip_port}/v2"
    unknown = httpx.get(f"{base}/models/nope", timeout=REQUEST_TIMEOUT)
    assert unknown.status_code == 404 and "capsnet-e2e" in unknown.json()["error"]
    assert httpx.get(f"{base}/models/{registered.tag.name}/versions/0", timeout=REQUEST_TIMEOUT).status_code == 404
    infer = f"{base}/models/{registered.tag.name}/infer"
    image = {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
    bad = [  # each malformed request, and the words its answer must hold
        ({"inputs": [{**image, "shape": [1, 1, 27, 27], "data": [0.0] * 729}]},
         "images must have shape [N, 28, 28] or [N, 1, 28, 28] for this model, got [1, 1, 27, 27]"),
        ({"inputs": [{**image, "datatype": "INT32", "data": [0] * 784}]},
         "input 'image' must be FP32 (or UINT8 pixels 0-255), got INT32"),
        ({"inputs": [{**image, "data": [0.0] * 10}]}, "input 'image' holds 10 values; shape [1, 1, 28, 28] needs 784"),
        ({"inputs": [{**image, "data": [2.0] * 784}]}, "pixel values must lie in [0, 1] (got 2..2)"),
        ({"inputs": [{**image, "name": "pixels"}]}, "expected one input named 'image', got 'pixels'"),
        ({"inputs": [image], "outputs": [{"name": "routing"}]}, "unknown outputs ['routing']; this model has"),
    ]
    for request, words in bad:
        response = httpx.post(infer, json=request, timeout=REQUEST_TIMEOUT)
        assert response.status_code == 400 and words in response.json()["error"], (request, response.text)
    not_json = httpx.post(infer, content=b"{not json", timeout=REQUEST_TIMEOUT)
    assert not_json.status_code == 400 and "not a JSON inference request" in not_json.json()["error"]
    assert httpx.get(infer, timeout=REQUEST_TIMEOUT).status_code == 405
    with server.oip_http() as client, pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")
    good = {"inputs": [{"name": "image", "shape": [1, 28, 28], "datatype": "FP32",
                        "data": images_of(28, 1)[0, 0].tolist()}]}  # nested rows, [N, S, S]
    answer = httpx.post(infer, json=good, timeout=REQUEST_TIMEOUT)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1, 10]
    assert "Traceback" not in server.output()


def test_classification_of_a_pair_model_ranks_its_capsule_lengths(server, registered_pair):
    images = images_of(36, 2)
    with server.oip_http() as client:
        tensor = httpclient.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=False)
        wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=False, class_count=2)]
        top = client.infer(registered_pair.tag.name, [tensor], outputs=wanted).as_numpy("probabilities")
    lengths = direct_outputs(registered_pair, images)["probabilities"]
    assert top.shape == (2, 2)
    for row, scores in zip(top, lengths, strict=True):  # the two longest capsules: the pair
        as_text = [item.decode() if isinstance(item, bytes) else item for item in row]  # JSON answers: strings
        assert [int(text.split(":")[1]) for text in as_text] == np.argsort(-scores, kind="stable")[:2].tolist()
