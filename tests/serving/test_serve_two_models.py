"""One `bentoml serve` with a single-digit, a two-digit and a Fashion-MNIST model: each answers over HTTP
and gRPC as direct ONNX Runtime does, with its own class names, and wrong sizes and unknown models get
clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.serving.server import GRPC_TIMEOUT, direct_outputs
from training.multimnist import fixed_pair_images


@pytest.fixture(scope="module")
def server(oip_server):
    return oip_server


@pytest.fixture(scope="module")
def pairs(synthetic_data_dir) -> tuple[np.ndarray, np.ndarray]:
    from training.data import load_split

    images, labels = load_split("mnist", "test", synthetic_data_dir)
    merged, pair_labels = fixed_pair_images(images[:6], labels[:6], 1, 4)
    return merged.numpy().astype(np.float32) / 255.0, pair_labels.numpy()


def test_metadata_lists_both_models_with_size_and_task(server, registered, registered_pair):
    meta = server.get("metadata").json()
    assert meta["default_model"] == "capsnet-e2e" and meta["model_tag"] == str(registered.tag)
    models = {m["name"]: m for m in meta["models"]}
    assert models["capsnet-multimnist"]["input_size"] == [1, 36, 36]
    assert models["capsnet-multimnist"]["task"]["objects"] == 2 and models["capsnet-multimnist"]["reconstructions"]
    assert models["capsnet-e2e"]["input_size"] == [1, 28, 28] and models["capsnet-e2e"]["task"]["objects"] == 1


def test_a_pair_comes_back_with_both_digits_over_http_and_grpc(server, registered_pair, pairs):
    images, _ = pairs
    expected = direct_outputs(registered_pair, images)
    top2 = np.argsort(-expected["probabilities"], axis=1, kind="stable")[:, :2]
    http = server.post("classify", json={"images": images.tolist(), "model": "capsnet-multimnist",
                                         "reconstructions": True})
    assert http.status_code == 200, http.text
    for answer, labels, p, recon in zip(http.json(), top2, expected["probabilities"],
                                        expected["reconstructions_top2"], strict=True):
        assert [o["label"] for o in answer["objects"]] == labels.tolist()
        np.testing.assert_allclose([o["length"] for o in answer["objects"]], p[labels], atol=1e-6)
        np.testing.assert_allclose([o["reconstruction"] for o in answer["objects"]], recon, atol=1e-6)
    with server.grpc() as client:
        tensor = grpcclient.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("capsnet-multimnist", [tensor], client_timeout=GRPC_TIMEOUT)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6)
        assert result.as_numpy("reconstructions_top2").shape == (len(images), 2, 1, 36, 36)
        assert client.is_model_ready("capsnet-multimnist") and client.is_model_ready("capsnet-e2e")
        assert client.get_model_metadata("capsnet-multimnist").inputs[0].shape == [-1, 1, 36, 36]
        for name, side in (("capsnet-multimnist", 36), ("capsnet-e2e", 28), ("capsnet-fashion-mnist", 28)):
            config = client.get_model_config(name, client_timeout=GRPC_TIMEOUT).config  # Triton's ModelConfig
            assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
            assert [(t.name, list(t.dims)) for t in config.input] == [("image", [1, side, side])]
            assert [t.name for t in config.output][:2] == ["probabilities", "poses"]
            assert [t.label_filename for t in config.output][:2] == ["labels.txt", ""]  # as in a Triton repository
        pair_outputs = client.get_model_config("capsnet-multimnist", client_timeout=GRPC_TIMEOUT).config.output
        assert [list(t.dims) for t in pair_outputs] == [[10], [10, 8], [2, 1, 36, 36]]


def test_the_fashion_model_answers_by_name_with_its_own_classes(server, registered_fashion, synthetic_data_dir):
    from training.data import load_split
    from training.task_registry import SOURCES

    images = load_split("fashion-mnist", "test", synthetic_data_dir)[0][:5].numpy().astype(np.float32) / 255.0
    expected = direct_outputs(registered_fashion, images)
    fashion_classes = list(SOURCES["fashion-mnist"].class_names)
    http = server.post("classify", json={"images": images.tolist(), "model": "capsnet-fashion-mnist"})
    assert http.status_code == 200, http.text
    for answer, p in zip(http.json(), expected["probabilities"], strict=True):
        assert answer["label"] == int(p.argmax()) and answer["class_name"] == fashion_classes[answer["label"]]
        np.testing.assert_allclose(answer["probabilities"], p, atol=1e-6)
    with server.grpc() as client:
        tensor = grpcclient.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("capsnet-fashion-mnist", [tensor], client_timeout=GRPC_TIMEOUT)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6)
    meta = {m["name"]: m for m in server.get("metadata").json()["models"]}
    fashion = meta["capsnet-fashion-mnist"]
    assert fashion["class_names"] == fashion_classes and fashion["explorer"]
    assert fashion["task"]["name"] == "fashion-mnist" and fashion["task"]["source"] == "fashion-mnist"
    assert registered_fashion.info.labels["dataset"] == "fashion-mnist"


def test_the_single_digit_model_still_answers_by_default(server, registered):
    digit = np.zeros((1, 28, 28), np.float32)
    digit[0, 8:20, 12:16] = 1.0
    answer = server.post("classify", json={"images": digit.tolist()}).json()[0]
    expected = direct_outputs(registered, digit[:, None])["probabilities"][0]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-6)
    assert len(answer["objects"]) == 1


def test_wrong_size_and_unknown_model_are_clear_errors(server, pairs):
    images, _ = pairs
    wrong = server.post("classify", json={"images": images.tolist()})  # 36x36 to the default 28x28 model
    assert wrong.status_code == 400 and "[N, 28, 28]" in wrong.json()["error"]
    unknown = server.post("classify", json={"images": images.tolist(), "model": "nope"})
    assert unknown.status_code == 404 and "capsnet-multimnist" in unknown.json()["error"]
    no_recon = server.post("classify", json={"images": np.zeros((1, 28, 28)).tolist(), "reconstructions": True})
    assert no_recon.status_code == 422 and "--with-top2-reconstructions" in no_recon.json()["error"]  # can't, not wrong
    with server.grpc() as client:
        for model, array, code in [("capsnet-e2e", images, "INVALID_ARGUMENT"), ("nope", images, "NOT_FOUND")]:
            tensor = grpcclient.InferInput("image", list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            with pytest.raises(InferenceServerException) as err:
                client.infer(model, [tensor], client_timeout=GRPC_TIMEOUT)
            assert code in str(err.value.status()), str(err.value)
    assert server.post("classify", json={"images": images.tolist(), "model": "capsnet-multimnist"}).status_code == 200


def test_an_uploaded_pair_is_fitted_to_the_pair_models_input(server, pairs):
    from PIL import Image

    from serving.handlers.preprocess import preprocess_encoded
    from tests.helpers import encoded

    upload = encoded(Image.fromarray((255 - pairs[0][0, 0] * 255).astype(np.uint8)).resize((180, 180)))
    response = server.post("classify_image", files=[("images", ("pair.png", upload, "image/png"))],
                           data={"model": "capsnet-multimnist"})
    assert response.status_code == 200, response.text
    fitted = preprocess_encoded(upload, 36)
    assert fitted.shape == (1, 36, 36)
    reference = server.post("classify", json={"images": fitted[None].tolist(), "model": "capsnet-multimnist"}).json()
    assert [o["label"] for o in response.json()[0]["objects"]] == [o["label"] for o in reference[0]["objects"]]
    np.testing.assert_allclose(response.json()[0]["probabilities"], reference[0]["probabilities"], atol=1e-6)


def test_the_explorer_explains_a_pair_with_both_drawings_and_a_10x10_part_grid(server, registered_pair, pairs):
    images, _ = pairs
    expected = direct_outputs(registered_pair, images[:2])
    response = server.post("explain", json={"images": images[:2].tolist(), "model": "capsnet-multimnist"})
    assert response.status_code == 200, response.text
    for answer, recon in zip(response.json(), expected["reconstructions_top2"], strict=True):
        assert len(answer["objects"]) == 2
        for k, found in enumerate(answer["objects"]):  # both digits' drawings, as the page colours them
            np.testing.assert_allclose(found["reconstruction"], recon[k], atol=1e-6)
        field = answer["part_whole"]["receptive_field"]  # 36x36 input: a 10x10 grid of primary capsules
        assert field["size"] == 17 and field["centres"] == [8 + 2 * i for i in range(10)]
        assert np.array(answer["part_whole"]["mass"]).shape[2:] == (10, 10)
    meta = {m["name"]: m for m in server.get("metadata").json()["models"]}
    assert meta["capsnet-multimnist"]["explorer"] and meta["capsnet-e2e"]["explorer"]
