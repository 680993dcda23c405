"""A real `bentoml serve` from the repository root, called over HTTP and gRPC with real clients."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import bentoml
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from serving.engine.providers import cuda_unavailable_reason
from serving.handlers.preprocess import preprocess_encoded
from tests.helpers import encoded
from tests.serving.fakes import NAN_IMAGE
from tests.serving.server import (
    GRPC_TIMEOUT,
    REQUEST_TIMEOUT,
    START_TIMEOUT,
    TEST_LATENCY_CAP_MS,
    Server,
    direct_outputs,
    serving,
)
from training.data import synthetic_digits


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic_digits(24, seed=3)[0][:, None].astype(np.float32) / 255.0


def grpc_infer(client, model: str, images: np.ndarray):
    tensor = grpcclient.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return client.infer(model, [tensor], client_timeout=GRPC_TIMEOUT)


def probabilities_of_one(server: Server, images: np.ndarray, k: int) -> np.ndarray:
    """Image k % len(images) sent on its own, over HTTP for odd k, over gRPC for even k -> [10].
    (Probabilities, not labels: a barely trained test model has near-ties that batch composition
    can flip by 1e-7.)"""
    one = images[k % len(images)][None]
    if k % 2:
        response = server.post("classify", json={"images": one.tolist()})
        assert response.status_code == 200, response.text
        return np.array(response.json()[0]["probabilities"])
    with server.grpc() as client:
        return grpc_infer(client, "capsnet-e2e", one).as_numpy("probabilities")[0]


def send_single_images_concurrently(server: Server, model: bentoml.Model, images: np.ndarray, count: int,
                                    threads: int = 16) -> None:
    """`count` single-image requests from `threads` threads, both protocols; each answer must match
    ONNX Runtime on the model file to 1e-6."""
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda k: probabilities_of_one(server, images, k), range(count),
                                timeout=REQUEST_TIMEOUT * 2))
    expected = direct_outputs(model, images)["probabilities"]
    np.testing.assert_allclose(np.stack(results), expected[np.arange(count) % len(images)], rtol=0, atol=1e-6)


def test_http_grpc_and_direct_onnx_runtime_agree(server, registered, images):
    direct = direct_outputs(registered, images)
    direct_probs, direct_poses = direct["probabilities"], direct["poses"]
    http = server.post("classify", json={"images": images[:16, 0].tolist()}).json() \
        + server.post("classify", json={"images": images[16:].tolist()}).json()
    http_probs = np.array([p["probabilities"] for p in http], np.float32)
    with server.grpc() as client:
        result = grpc_infer(client, "capsnet-e2e", images[:16])
        grpc_probs = np.concatenate([result.as_numpy("probabilities"),
                                     grpc_infer(client, "capsnet-e2e", images[16:]).as_numpy("probabilities")])
        grpc_poses = result.as_numpy("poses")
    labels = direct_probs.argmax(1)
    assert [p["label"] for p in http] == labels.tolist() == grpc_probs.argmax(1).tolist()
    np.testing.assert_allclose(http_probs, direct_probs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(grpc_probs, direct_probs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(grpc_poses, direct_poses[:16], rtol=0, atol=1e-6)
    assert np.array(http[0]["poses"]).shape == (10, 8) and http[0]["class_name"] == str(http[0]["label"])


def test_classify_image_preprocesses_like_mnist(server, images):
    pixels = (images[:6, 0] * 255).astype(np.uint8)
    files, expected = [], []
    for k, digit in enumerate(pixels):
        big = Image.fromarray(255 - digit).resize((140, 140))  # dark on light, 5x larger, JPEG
        upload = encoded(big, "JPEG" if k % 2 else "PNG")
        files.append(("images", (f"digit{k}.{'jpg' if k % 2 else 'png'}", upload, "image/jpeg")))
        expected.append(preprocess_encoded(upload))
    # an independent check of the preparation itself: what the model sees is the digit that was
    # uploaded, back in MNIST's form (light on dark, 28x28, centred), not just whatever
    # preprocess_encoded returns (a 2-pixel shift of the same digit correlates below 0.9)
    for prepared, digit in zip(expected, images[:6, 0], strict=True):
        assert np.corrcoef(prepared.ravel(), digit.ravel())[0, 1] > 0.9
    response = server.post("classify_image", files=files)
    assert response.status_code == 200, response.text
    reference = server.post("classify", json={"images": np.stack(expected).tolist()}).json()
    assert [p["label"] for p in response.json()] == [p["label"] for p in reference]
    np.testing.assert_allclose([p["probabilities"] for p in response.json()],
                               [p["probabilities"] for p in reference], atol=1e-6)


def test_metadata_and_builtin_endpoints(server, registered):
    meta = server.get("metadata").json()
    assert meta["model_tag"] == str(registered.tag)
    # what this machine can run, decided here, not read back from the server's own answer
    expected = "CPUExecutionProvider" if cuda_unavailable_reason() else "CUDAExecutionProvider"
    assert meta["provider"] == expected and (meta["cuda_unavailable"] is None) == (expected != "CPUExecutionProvider")
    assert meta["routing_iters"] == 3 and meta["class_names"] == [str(d) for d in range(10)]
    assert meta["parity"]["passed"] is True
    assert meta["batching"]["max_batch_size"] == 16 and meta["batching"]["max_latency_ms"] == int(TEST_LATENCY_CAP_MS)
    log = server.output(tail=10**7)
    assert f"on {meta['provider']}" in log and f"listening on 127.0.0.1:{server.grpc_port}" in log
    assert {"onnxruntime", "bentoml"} <= set(meta["versions"])
    # the served ModelConfig describes the batcher that runs: this server's 20 ms queue delay
    # (conftest.py), and no preferred batch sizes, since the batcher has none
    with server.grpc() as client:
        batching = client.get_model_config(registered.tag.name).config.dynamic_batching
    assert batching.max_queue_delay_microseconds == 20_000 and list(batching.preferred_batch_size) == []
    assert httpx.get(server.url + "/livez", timeout=5).status_code == 200
    assert "bentoml" in httpx.get(server.url + "/metrics", timeout=5).text
    paths = httpx.get(server.url + "/docs.json", timeout=5).json()["paths"]
    assert {"/classify", "/classify_image", "/metadata"} <= set(paths)
    with server.grpc() as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("capsnet-e2e")
        assert client.get_model_metadata("capsnet-e2e").inputs[0].shape == [-1, 1, 28, 28]


def oip_stats(server: Server) -> dict:
    """The statistics extension's figures for capsnet-e2e (one version served)."""
    answer = httpx.get(f"http://127.0.0.1:{server.oip_port}/v2/models/capsnet-e2e/stats", timeout=REQUEST_TIMEOUT)
    return answer.json()["model_stats"][0]


def test_concurrent_http_and_grpc_requests_share_batches(server, images):
    before = oip_stats(server)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda k: probabilities_of_one(server, images, k), range(64),
                                timeout=REQUEST_TIMEOUT * 2))
    after = oip_stats(server)
    assert len(results) == 64 and all(r.shape == (10,) and np.isfinite(r).all() for r in results)
    assert after["inference_count"] - before["inference_count"] == 64  # every protocol's requests counted
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 64
    batches = after["execution_count"] - before["execution_count"]
    assert batches < 64, "every request ran alone: no batching"
    assert max(b["batch_size"] for b in after["batch_stats"]) > 1


HTTP_BAD = [
    ("classify", {"json": {"images": np.zeros((2, 27, 28)).tolist()}}, 400, "shape"),
    ("classify", {"json": {"images": np.zeros((28, 28)).tolist()}}, 400, "shape"),
    ("classify", {"json": {"images": [[["x"] * 28] * 28]}}, 400, "real numbers"),
    ("classify", {"content": NAN_IMAGE, "headers": {"content-type": "application/json"}}, 400, "NaN or infinite"),
    ("classify", {"json": {"images": np.full((1, 28, 28), 255.0).tolist()}}, 400, "[0, 1]"),
    ("classify", {"json": {"images": []}}, 400, "empty"),
    ("classify", {"json": {"images": np.zeros((17, 28, 28)).tolist()}}, 400, "limit is 16"),
    ("classify", {"content": b"x" * (9 << 20), "headers": {"content-type": "application/json"}}, 413, "bytes"),
    ("classify_image", {"files": [("images", ("x.png", b"not an image", "image/png"))]}, 400, "not a PNG"),
]


def test_bad_inputs_get_clear_errors_and_the_server_stays_correct(server, images):
    reference = server.post("classify", json={"images": images[:4].tolist()}).json()
    for api, kwargs, status, message in HTTP_BAD:
        response = server.post(api, **kwargs)
        assert response.status_code == status, (api, kwargs.keys(), response.text)
        assert message in response.text, response.text
        assert "null" not in response.text
    with server.grpc() as client:
        bad = [(np.zeros((1, 1, 27, 28), np.float32), "FP32", "capsnet-e2e", "INVALID_ARGUMENT"),
               (np.zeros((1, 1, 28, 28), np.float64), "FP64", "capsnet-e2e", "INVALID_ARGUMENT"),
               (np.full((1, 1, 28, 28), np.nan, np.float32), "FP32", "capsnet-e2e", "INVALID_ARGUMENT"),
               (np.full((1, 1, 28, 28), 2.0, np.float32), "FP32", "capsnet-e2e", "INVALID_ARGUMENT"),
               (np.zeros((0, 1, 28, 28), np.float32), "FP32", "capsnet-e2e", "INVALID_ARGUMENT"),
               (np.zeros((17, 1, 28, 28), np.float32), "FP32", "capsnet-e2e", "INVALID_ARGUMENT"),
               (np.zeros((1, 1, 28, 28), np.float32), "FP32", "no-such-model", "NOT_FOUND"),
               # over CAPSNET_MAX_REQUEST_BYTES (8 MiB): gRPC's own status for an oversized message
               (np.zeros((3000, 1, 28, 28), np.float32), "FP32", "capsnet-e2e", "RESOURCE_EXHAUSTED")]
        for array, dtype, model, code in bad:
            tensor = grpcclient.InferInput("image", list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            with pytest.raises(InferenceServerException) as err:
                client.infer(model, [tensor], client_timeout=GRPC_TIMEOUT)
            assert code in str(err.value.status()), (array.shape, dtype, str(err.value))
    assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
    assert server.post("classify", json={"images": images[:4].tolist()}).json() == reference


def test_a_bad_request_does_not_fail_its_batch_mates(server, images):
    """Bad requests are validated away before they reach the batcher; were validation moved into the
    batched run, each bad one would fail the whole batch it joined, and the good ones with it."""
    def good(k: int) -> int:
        return server.post("classify", json={"images": images[k:k + 1].tolist()}).status_code

    def bad(_: int) -> int:
        return server.post("classify", json={"images": np.full((1, 28, 28), 2.0).tolist()}).status_code

    with ThreadPoolExecutor(16) as pool:
        goods = [pool.submit(good, k) for k in range(16)]
        bads = [pool.submit(bad, k) for k in range(16)]
        assert [f.result(timeout=REQUEST_TIMEOUT * 2) for f in goods] == [200] * 16
        assert all(f.result(timeout=REQUEST_TIMEOUT * 2) == 400 for f in bads)


def test_two_workers_share_the_grpc_port_and_metrics_count_every_request(registered, images):
    with serving({"CAPSNET_MODEL_TAG": str(registered.tag), "CAPSNET_WORKERS": "2"}) as s:
        deadline = time.monotonic() + START_TIMEOUT  # each worker starts its own gRPC server
        while s.output(tail=10**7).count(f"listening on 127.0.0.1:{s.grpc_port}") < 2:
            assert time.monotonic() < deadline, s.output()
            time.sleep(0.5)
        send_single_images_concurrently(s, registered, images, 48)
        # OIP REST shares its port between the two workers too (SO_REUSEPORT): every request answered
        infer = f"http://127.0.0.1:{s.oip_port}/v2/models/{registered.tag.name}/infer"
        request = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                               "data": images[0].reshape(-1).tolist()}]}
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: httpx.post(infer, json=request, timeout=REQUEST_TIMEOUT).status_code,
                                     range(16)))
        assert statuses == [200] * 16
        lines = [line for line in httpx.get(s.url + "/metrics", timeout=5).text.splitlines()
                 if line.startswith("nv_inference_count{") and 'model="capsnet-e2e"' in line]
        # Triton's series, summed over both workers' processes, saw every image
        assert sum(float(line.rpartition(" ")[2]) for line in lines) == 48 + 16, lines


def test_a_taken_grpc_port_is_an_error_not_silently_shared(registered):
    import socket

    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # would let gRPC's default share it
    squatter.bind(("0.0.0.0", 0))
    squatter.listen()
    s = Server({"CAPSNET_MODEL_TAG": str(registered.tag), "CAPSNET_GRPC_PORT": str(squatter.getsockname()[1])})
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "cannot bind the gRPC port" not in s.output():
            assert time.monotonic() < deadline, s.output()
            time.sleep(0.5)
        try:
            readiness = httpx.get(s.url + "/readyz", timeout=5).status_code
        except httpx.HTTPError:
            readiness = None  # the HTTP side is not up at all: not ready either
        assert readiness != 200
    finally:
        s.stop()
        squatter.close()


def test_serve_without_a_registered_model_exits_with_instructions(tmp_path):
    s = Server({"BENTOML_HOME": str(tmp_path / "empty-store")})
    try:
        s.process.wait(timeout=START_TIMEOUT)
        assert s.process.returncode != 0
        assert "make pipeline" in s.output() and "capsnet export" in s.output()
    finally:
        s.stop()


def test_required_gpu_fails_readiness_on_cpu(registered):
    from serving.engine.providers import gpu_count

    if gpu_count() > 0:
        pytest.skip("a GPU is present: readiness would legitimately pass")
    s = Server({"CAPSNET_MODEL_TAG": str(registered.tag), "CAPSNET_REQUIRE_GPU": "1"})
    try:
        s.wait("/livez", 200)
        s.wait("/readyz", 503)
        time.sleep(2)
        assert httpx.get(s.url + "/readyz", timeout=5).status_code == 503
        with s.grpc() as client:
            assert client.is_server_live() and not client.is_server_ready()
        assert "CAPSNET_REQUIRE_GPU" in s.output()
    finally:
        s.stop()
