"""Operating the server as Triton is operated, with the stock tritonclient on both transports, against
one `bentoml serve` with CAPSNET_MODEL_CONTROL=explicit: the repository index, a second version loaded
beside the first and answering by version, unload and load without a restart (also under load), the
statistics extension counting every request, the classification extension, and Triton's nv_inference_*
series on /metrics."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import bentoml
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export.onnx_export import export_onnx
from export.registry import register_export
from serving.oip.dataplane import EXTENSIONS
from tests.serving.server import CONTROL_KEY, GRPC_TIMEOUT, OPERATOR, REQUEST_TIMEOUT, direct_outputs, ready_server
from training.config import TrainConfig

NAME = "capsnet-e2e"


@pytest.fixture(scope="module")
def second(synthetic_data_dir, tmp_path_factory) -> bentoml.Model:
    """Another version of the same model with weights of its own (trained from another seed), as a
    retrained export would be: a request for it that the first version answered would be caught."""
    from training.train import train

    run = tmp_path_factory.mktemp("second-run")
    train(TrainConfig(variant="tiny", epochs=1, batch_size=32, val_size=120, device="cpu", max_steps=8, seed=1),
          run, synthetic_data_dir, progress=False)
    out = tmp_path_factory.mktemp("second-export")
    export_onnx(run / "last.pt", out, data_dir=synthetic_data_dir, limit=32)
    return bentoml.models.get(register_export(out, NAME))


@pytest.fixture(scope="module")
def server(registered, second):
    """A server of this module's own (its tests load, unload and switch versions: no other module
    sees that): capsnet-e2e pinned to its first version, batches of 8, model control on."""
    yield from ready_server({"CAPSNET_MODEL_TAG": str(registered.tag), "CAPSNET_MAX_BATCH_SIZE": "8",
                             "CAPSNET_MODEL_CONTROL": "explicit", "CAPSNET_CONTROL_KEY": CONTROL_KEY})


def images_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def direct(model: bentoml.Model, images: np.ndarray) -> np.ndarray:
    return direct_outputs(model, images)["probabilities"]


def rest_infer(client: httpclient.InferenceServerClient, images: np.ndarray, version: str = "",
               class_count: int = 0) -> httpclient.InferResult:
    tensor = httpclient.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=True)
    wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=class_count)]
    return client.infer(NAME, [tensor], model_version=version, outputs=wanted)


def grpc_infer(client: grpcclient.InferenceServerClient, images: np.ndarray, version: str = "",
               class_count: int = 0) -> grpcclient.InferResult:
    tensor = grpcclient.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    wanted = [grpcclient.InferRequestedOutput("probabilities", class_count=class_count)]
    return client.infer(NAME, [tensor], model_version=version, outputs=wanted, client_timeout=GRPC_TIMEOUT)


def load(client: httpclient.InferenceServerClient, *versions: str) -> None:
    client.load_model(NAME, config=json.dumps({"version_policy": {"specific": {"versions": list(versions)}}}),
                      headers=OPERATOR)


def index(client: httpclient.InferenceServerClient) -> dict[str, str]:
    return {entry["version"]: entry["state"] for entry in client.get_model_repository_index() if entry["name"] == NAME}


def test_the_server_says_what_it_serves_and_lists_exactly_its_extensions(server, registered, second):
    assert f"serving {registered.tag} (" in server.output(tail=10**7)  # which version, trained how, from where
    with server.oip_http() as rest, server.grpc() as grpc:
        assert rest.get_server_metadata()["extensions"] == EXTENSIONS
        assert list(grpc.get_server_metadata().extensions) == EXTENSIONS
        assert index(rest) == {registered.tag.version: "READY", second.tag.version: "UNAVAILABLE"}
        over_grpc = grpc.get_model_repository_index(as_json=True)["models"]
        assert [(m["version"], m["state"]) for m in over_grpc if m["name"] == NAME] == [
            (registered.tag.version, "READY"), (second.tag.version, "UNAVAILABLE")]


def test_a_second_version_loads_beside_the_first_and_answers_by_version(server, registered, second):
    v1, v2 = registered.tag.version, second.tag.version
    images = images_of(3)
    with server.oip_http() as rest, server.grpc() as grpc:
        load(rest, v1, v2)
        assert index(rest) == {v1: "READY", v2: "READY"}
        assert rest.get_model_metadata(NAME)["versions"] == [v1, v2]
        assert not np.allclose(direct(registered, images), direct(second, images), atol=1e-3)  # two models
        for version, model in ((v1, registered), (v2, second)):
            assert rest.is_model_ready(NAME, version) and grpc.is_model_ready(NAME, version)
            by_rest, by_grpc = rest_infer(rest, images, version), grpc_infer(grpc, images, version)
            assert by_rest.get_response()["model_version"] == version
            assert by_grpc.get_response().model_version == version
            for result in (by_rest, by_grpc):  # each version answers with its own weights
                np.testing.assert_allclose(result.as_numpy("probabilities"), direct(model, images), atol=1e-6)
        assert rest_infer(rest, images).get_response()["model_version"] == v1  # none named: the first listed
        answer = server.post("classify", json={"images": images.tolist(), "model": f"{NAME}:{v2}"})
        assert answer.status_code == 200 and answer.headers["x-capsnet-model"] == f"{NAME}:{v2}"
        np.testing.assert_allclose([p["probabilities"] for p in answer.json()], direct(second, images), atol=1e-5)
        load(rest, v1)  # back to one version: v2 leaves service
        assert index(rest) == {v1: "READY", v2: "UNAVAILABLE"}
        with pytest.raises(InferenceServerException, match=f"version '{v2}'"):
            rest_infer(rest, images, v2)


def counts(stats: dict) -> tuple[int, int, int]:
    """(successful requests, images, executions) of one version's statistics (JSON)."""
    return (int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("inference_count", 0)),
            int(stats.get("execution_count", 0)))


def test_statistics_rise_by_exactly_the_requests_sent_on_both_transports(server, registered):
    version = registered.tag.version
    with server.oip_http() as rest, server.grpc() as grpc:
        before = rest.get_inference_statistics(NAME, version)["model_stats"][0]
        for k in range(5):
            rest_infer(rest, images_of(1, k))
        for k in range(4):
            grpc_infer(grpc, images_of(2, k))
        assert server.post("classify", json={"images": images_of(1).tolist()}).status_code == 200
        after_rest = rest.get_inference_statistics(NAME, version)["model_stats"][0]
        after_grpc = grpc.get_inference_statistics(NAME, version, as_json=True)["model_stats"][0]
    assert counts(after_rest)[:2] == (counts(before)[0] + 10, counts(before)[1] + 14)  # 10 requests, 14 images
    assert counts(after_grpc) == counts(after_rest)  # one set of counters behind both transports
    assert counts(before)[2] < counts(after_rest)[2] <= counts(before)[2] + 10
    queue, infer = after_rest["inference_stats"]["queue"], after_rest["inference_stats"]["compute_infer"]
    assert int(queue["count"]) == int(infer["count"]) == counts(after_rest)[0] and int(infer["ns"]) > 0
    assert int(after_rest["last_inference"]) > time.time() * 1000 - 60_000
    assert sum(int(b["compute_infer"]["count"]) for b in after_rest["batch_stats"]) == counts(after_rest)[2]


def test_classification_returns_the_top_classes_with_their_names(server, registered):
    images = images_of(4, seed=7)
    expected = direct(registered, images)
    with server.oip_http() as rest, server.grpc() as grpc:
        for result in (rest_infer(rest, images, class_count=3), grpc_infer(grpc, images, class_count=3)):
            top = result.as_numpy("probabilities")
            assert top.shape == (4, 3)
            for row, scores in zip(top, expected, strict=True):
                parsed = [item.decode().split(":") for item in row]
                assert [int(index) for _, index, _ in parsed] == np.argsort(-scores, kind="stable")[:3].tolist()
                assert [label for _, index, label in parsed] == [str(int(index)) for _, index, _ in parsed]
                assert float(parsed[0][0]) == pytest.approx(scores.max(), abs=1e-6)


def series(server, name: str, version: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=REQUEST_TIMEOUT).text.splitlines():
        if line.startswith(f"{name}{{") and f'model="{NAME}"' in line and f'version="{version}"' in line:
            return float(line.rpartition(" ")[2])
    return 0.0


def test_triton_metrics_count_a_burst_and_give_its_mean_batch(server, registered):
    version = registered.tag.version
    names = ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count")
    before = {n: series(server, n, version) for n in names}
    with server.oip_http() as rest:
        stats_before = counts(rest.get_inference_statistics(NAME, version)["model_stats"][0])
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda k: server.post("classify", json={"images": images_of(1, k).tolist()}),
                                    range(24), timeout=REQUEST_TIMEOUT * 2))
        assert [a.status_code for a in answers] == [200] * 24
        stats_after = counts(rest.get_inference_statistics(NAME, version)["model_stats"][0])
    after = {n: series(server, n, version) for n in names}
    assert after["nv_inference_request_success"] - before["nv_inference_request_success"] == 24
    assert after["nv_inference_count"] - before["nv_inference_count"] == 24
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    assert executions == stats_after[2] - stats_before[2] and 1 <= executions <= 24
    assert series(server, "nv_inference_request_duration_us", version) > 0
    assert series(server, "nv_inference_compute_infer_duration_us", version) > 0


def test_unload_then_load_without_a_restart(server, registered):
    images = images_of(2, seed=3)
    with server.oip_http() as rest, server.grpc() as grpc:
        rest.unload_model(NAME, headers=OPERATOR)
        assert not rest.is_model_ready(NAME) and not grpc.is_model_ready(NAME)
        with pytest.raises(InferenceServerException, match="not loaded"):
            rest_infer(rest, images)
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            grpc_infer(grpc, images)
        gone = server.post("classify", json={"images": images.tolist()})
        assert gone.status_code == 404 and "not loaded" in gone.json()["error"]
        grpc.load_model(NAME, headers=OPERATOR)  # its policy: the versions it was last loaded with
        np.testing.assert_allclose(rest_infer(rest, images).as_numpy("probabilities"), direct(registered, images),
                                   atol=1e-6)
        assert server.post("classify", json={"images": images.tolist()}).status_code == 200


def test_load_and_unload_under_load_drop_nothing(server, registered, second):
    v1, v2 = registered.tag.version, second.tag.version
    stop, statuses = threading.Event(), []
    image = images_of(1).tolist()

    def client() -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT) as session:
            while not stop.is_set():
                statuses.append(session.post(server.url + "/classify", json={"images": image}).status_code)

    def answered(n: int) -> None:
        """Wait until `n` more requests were answered (an event, not a rate; the deadline is a hang guard)."""
        target, deadline = len(statuses) + n, time.monotonic() + REQUEST_TIMEOUT
        while len(statuses) < target:
            assert time.monotonic() < deadline, "the clients stopped getting answers"
            time.sleep(0.005)

    with ThreadPoolExecutor(64) as pool, server.oip_http() as rest:  # the issue's 64 clients
        clients = [pool.submit(client) for _ in range(64)]
        answered(8)
        for versions in ((v2,), (v1, v2), (v1,), (v2, v1), (v1,)):  # every switch while requests flow
            load(rest, *versions)
            answered(8)  # requests were answered after this switch, before the next
        assert set(statuses) == {200}, sorted(set(statuses))
        rest.unload_model(NAME, headers=OPERATOR)
        answered(8)
        load(rest, v1)
        answered(8)
        stop.set()
        for c in clients:
            c.result(timeout=REQUEST_TIMEOUT)
    assert set(statuses) <= {200, 404} and 404 in statuses, sorted(set(statuses))  # unloaded: 404, never a 5xx
    assert statuses[-1] == 200
