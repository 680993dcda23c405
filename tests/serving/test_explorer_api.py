"""The explorer's APIs in-process (explain, explain_image, reconstruct, perturb, equivariance) and the
page's static files, against the tiny test model exported with the explorer's graphs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from serving.handlers.explorer import PERTURBATION_DELTAS
from tests.helpers import encoded
from training.data import synthetic_digits

IMAGES = synthetic_digits(3, seed=11)[0].astype(np.float32) / 255.0  # [3, 28, 28]


@pytest.fixture(scope="module")
def explained(client) -> list[dict]:
    response = client.post("/explain", json={"images": IMAGES.tolist()})
    assert response.status_code == 200, response.text
    return response.json()


def test_explain_adds_the_reconstruction_and_the_part_whole_map_to_classify(client, explained, registered):
    classified = client.post("/classify", json={"images": IMAGES.tolist()}).json()
    for mine, theirs in zip(explained, classified, strict=True):
        assert mine["label"] == theirs["label"]
        np.testing.assert_allclose(mine["probabilities"], theirs["probabilities"], atol=1e-6)
    first = explained[0]
    np.testing.assert_array_equal(np.array(first["input"])[0], IMAGES[0])
    assert np.array(first["reconstruction"]).shape == (1, 28, 28)
    part_whole = first["part_whole"]
    assert part_whole["receptive_field"] == {"size": 17, "centres": [8.0, 10.0, 12.0, 14.0, 16.0, 18.0]}
    mass = np.array(part_whole["mass"])  # [classes][types][grid][grid]
    assert mass.shape == (10, 2, 6, 6) and (mass >= 0).all()
    np.testing.assert_allclose(np.array(part_whole["grid_mass"]), mass.sum(1), rtol=1e-6)
    # the coupling of each part sums to 1 over the classes, so the mass sums to the part's length
    graph = ort.InferenceSession(registered.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    (lengths,) = graph.run(["primary_lengths"], {"image": IMAGES[:1, None]})
    np.testing.assert_allclose(mass.sum(0).reshape(-1), lengths[0], rtol=1e-5, atol=1e-7)


def test_reconstruct_of_explains_poses_is_explains_reconstruction(client, explained):
    for item in explained:
        response = client.post("/reconstruct", json={"poses": [item["poses"]], "label": item["label"]})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["images"][0], item["reconstruction"], rtol=0, atol=1e-5)
    # without a label, each set is drawn from its longest capsule
    default = client.post("/reconstruct", json={"poses": [e["poses"] for e in explained]}).json()
    assert default["labels"] == [e["label"] for e in explained]


def test_perturb_is_the_fig4_grid_and_its_zero_column_is_the_reconstruction(client, explained):
    response = client.post("/perturb", json={"image": IMAGES[0].tolist()})
    assert response.status_code == 200, response.text
    grid = response.json()
    assert grid["label"] == explained[0]["label"] and grid["deltas"] == list(PERTURBATION_DELTAS)
    images = np.array(grid["images"])
    assert images.shape == (8, 11, 28, 28)  # the tiny model's 8 pose dimensions x 11 steps
    zero = PERTURBATION_DELTAS.index(0.0)
    for row in images[:, zero]:
        np.testing.assert_allclose(row, explained[0]["reconstruction"][0], rtol=0, atol=1e-5)
    other = client.post("/perturb", json={"image": [IMAGES[0].tolist()], "label": 3}).json()
    assert other["label"] == 3 and other["pose"] == pytest.approx(explained[0]["poses"][3], abs=1e-6)


def test_equivariance_strips_shift_and_rotate_the_input(client, explained):
    response = client.post("/equivariance", json={"image": IMAGES[0].tolist(), "max_shift": 2, "max_rotation": 30})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == explained[0]["label"] and 0.0 <= body["class_kept"] <= 1.0
    strips = {s["kind"]: s["views"] for s in body["strips"]}
    assert [v["value"] for v in strips["shift_x"]] == [-2, -1, 0, 1, 2]
    assert [v["value"] for v in strips["rotation"]] == [-30, -20, -10, 0, 10, 20, 30]
    right = np.array(strips["shift_x"][4]["image"])
    np.testing.assert_allclose(right[:, 2:], IMAGES[0][:, :-2], atol=1e-5)  # moved 2 px right, zero-filled
    assert not right[:, :2].any()
    unchanged = strips["rotation"][3]
    np.testing.assert_allclose(unchanged["image"], IMAGES[0], atol=1e-5)
    np.testing.assert_allclose(unchanged["pose"], explained[0]["poses"][explained[0]["label"]], atol=1e-5)


def test_explain_image_reports_the_image_the_model_saw(client):
    upload = encoded(Image.fromarray((255 - IMAGES[1] * 255).astype(np.uint8)).resize((140, 140)))  # dark on light
    response = client.post("/explain_image", files=[("images", ("d.png", upload, "image/png"))])
    assert response.status_code == 200, response.text
    (item,) = response.json()
    seen = np.array(item["input"])
    assert seen.shape == (1, 28, 28) and seen.max() > 0.5 and seen[0, 0, 0] == 0.0  # inverted: ink is bright
    again = client.post("/classify", json={"images": [item["input"]]}).json()[0]
    assert again["label"] == item["label"]


@pytest.mark.parametrize("api, body, message", [
    ("/reconstruct", {"poses": [[[0.0] * 8] * 9]}, "shape [N, 10, 8]"),
    ("/reconstruct", {"poses": [[[0.0] * 8] * 10], "label": 10}, "less than or equal to 9"),
    ("/reconstruct", {"poses": [[[1e3] * 8] * 10]}, "pose values must lie in [-10, 10]"),
    ("/reconstruct", {"poses": [[["a"] * 8] * 10]}, "rectangular array of real numbers"),
    ("/perturb", {"image": [[0.0] * 28] * 27}, "got [1, 27, 28]"),
    ("/perturb", {"image": IMAGES[0].tolist(), "label": -1}, "greater than or equal to 0"),
    ("/equivariance", {"image": IMAGES[0].tolist(), "max_shift": 7}, "less than or equal to 6"),
    ("/equivariance", {"image": (IMAGES[0] * 2).tolist()}, "[0, 1]"),
    ("/explain", {"images": [[[0.5] * 28] * 28] * 17}, "limit is 16"),
])
def test_bad_explorer_input_is_a_4xx_and_the_server_stays_correct(client, explained, api, body, message):
    response = client.post(api, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert message in response.json()["error"]
    again = client.post("/explain", json={"images": IMAGES[:1].tolist()}).json()[0]
    assert again["label"] == explained[0]["label"]


def test_non_finite_poses_are_refused():
    from serving.handlers.validation import InputError, validate_poses

    poses = np.zeros((1, 10, 8))
    poses[0, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        validate_poses(poses, None, 4, 10, 8)
    with pytest.raises(InputError, match="label must be an integer"):
        validate_poses(np.zeros((1, 10, 8)), True, 4, 10, 8)


def test_every_explorer_api_is_documented_with_an_example(client):
    paths = client.get("/docs.json").json()["paths"]
    for api in ("/explain", "/explain_image", "/reconstruct", "/perturb", "/equivariance"):
        assert api in paths, api
        body = paths[api]["post"]["requestBody"]
        assert body["required"] is True
    for api in ("/explain", "/reconstruct", "/perturb", "/equivariance"):  # JSON bodies show an example
        assert "examples" in str(paths[api]), api


def test_the_explorer_page_is_served(client):
    page = client.get("/explorer/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert client.get("/explorer", follow_redirects=False).status_code in (301, 307, 200)
