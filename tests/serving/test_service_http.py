"""The HTTP API in-process: BentoML's ASGI app (`CapsNetService.to_asgi()`) under Starlette's
TestClient, with its real startup (model load, warm-up, gRPC server) but no `bentoml serve`."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest

from tests.helpers import encoded
from tests.serving.fakes import NAN_IMAGE
from training.data import synthetic_digits


def png(array: np.ndarray) -> bytes:
    return encoded(array, "PNG")


def test_classify_answers_per_image(client, registered):
    images = synthetic_digits(3, seed=4)[0].astype(np.float32) / 255.0
    response = client.post("/classify", json={"images": images.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body) == 3 and {p["class_name"] for p in body} <= {str(d) for d in range(10)}
    assert all(np.array(p["poses"]).shape == (10, 8) and len(p["probabilities"]) == 10 for p in body)
    upload = client.post("/classify_image", files=[("images", ("d.png", png((images[0] * 255).astype(np.uint8)),
                                                                 "image/png"))])
    assert upload.status_code == 200 and len(upload.json()) == 1
    # a JPEG sent as image/png is a JPEG: decided by the content, and accepted
    as_png = client.post("/classify_image", files=[("images", ("d.png", encoded((images[0] * 255).astype(np.uint8),
                                                                                "JPEG"), "image/png"))])
    assert as_png.status_code == 200 and len(as_png.json()) == 1


BAD_REQUESTS = [
    # (route, request kwargs, status, words the message must contain)
    ("/classify", {"json": {"images": np.zeros((2, 27, 28)).tolist()}}, 400, "shape"),
    ("/classify", {"json": {"images": np.zeros((28, 28)).tolist()}}, 400, "shape"),
    ("/classify", {"json": {"images": [[["x"] * 28] * 28]}}, 400, "real numbers"),
    ("/classify", {"content": NAN_IMAGE, "headers": {"content-type": "application/json"}}, 400, "NaN or infinite"),
    ("/classify", {"json": {"images": np.full((1, 28, 28), 255.0).tolist()}}, 400, "divide 8-bit pixels by 255"),
    ("/classify", {"json": {"images": []}}, 400, "empty"),
    ("/classify", {"json": {"images": np.zeros((17, 28, 28)).tolist()}}, 400, "limit is 16"),
    ("/classify", {"json": {}}, 400, "images: Field required"),
    ("/classify", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "Invalid JSON"),
    ("/classify", {"files": [("images", ("x.png", b"abc", "image/png"))]}, 400, "send application/json"),
    ("/classify", {"content": b"x" * (2 << 20), "headers": {"content-type": "application/json"}}, 413, "bytes"),
    ("/infer", {"json": {"images": []}}, 400, "empty"),
    ("/infer", {"json": {"images": np.full((1, 1, 28, 28), -1.0).tolist()}}, 400, "[0, 1]"),
    ("/classify_image", {"files": [("images", ("x.png", b"not an image", "image/png"))]}, 400, "not a PNG"),
    ("/classify_image", {"files": [("images", ("x.png", b"", "image/png"))]}, 400, "empty"),
    # a GIF that says it is a PNG: the content decides, and only PNG and JPEG are decoded
    ("/classify_image", {"files": [("images", ("x.png", encoded(np.zeros((28, 28), np.uint8), "GIF"), "image/png"))]},
     400, "not a PNG or JPEG image"),
    ("/classify_image", {"files": {"images": (None, "plain text")}}, 400, "must hold files"),
    ("/classify_image", {"files": {"images": (None, "http://127.0.0.1:9/secret.png")}}, 400, "must hold files"),
    ("/classify_image", {"content": b"http://127.0.0.1:9/x.png", "headers": {"content-type": "application/json"}},
     400, "multipart/form-data"),
    ("/classify_image", {"files": [("other", ("x.png", b"abc", "image/png"))]}, 400, "images: Field required"),
    ("/classify_image", {"files": [("images", (f"{k}.png", png(np.zeros((28, 28), np.uint8)), "image/png"))
                                   for k in range(17)]}, 400, "16"),
    ("/classify_image", {"content": b"--b\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=b"}},
     400, "images"),
    ("/classify_image", {"content": b"abc", "headers": {"content-type": "multipart/form-data"}}, 400, "multipart"),
    ("/classify", {"content": b"images=1", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 400,
     "Content-Type application/x-www-form-urlencoded is not accepted here: send application/json"),
    ("/classify", {"content": b"\x80\x04N.", "headers": {"content-type": "application/vnd.bentoml+pickle"}}, 400,
     "Content-Type application/vnd.bentoml+pickle is not accepted here"),
    # a body streamed without Content-Length is counted as it arrives
    ("/classify", {"content": iter([b"x" * (1 << 19)] * 4), "headers": {"content-type": "application/json"}}, 413,
     "request body over 1048576 bytes (CAPSNET_MAX_REQUEST_BYTES)"),
]


@pytest.mark.parametrize("route, kwargs, status, words", BAD_REQUESTS,
                         ids=[f"{r}-{i}" for i, (r, *_) in enumerate(BAD_REQUESTS)])
def test_bad_input_is_a_4xx_with_one_error_shape_and_one_log_line(client, caplog, route, kwargs, status, words):
    with caplog.at_level(logging.INFO):
        response = client.post(route, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and words in body["error"], body
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]
    assert any(r.levelno == logging.WARNING and str(status) in r.getMessage() for r in caplog.records)


def test_a_server_fault_is_a_500_that_keeps_its_traceback(client, service, caplog, monkeypatch):
    import serving.handlers.classify

    def broken(self, outputs, model=None, reconstructions=False):
        raise RuntimeError("simulated model fault")

    monkeypatch.setattr(serving.handlers.classify.Classifier, "predictions", broken)
    with caplog.at_level(logging.INFO):
        response = client.post("/classify", json={"images": np.zeros((1, 28, 28)).tolist()})
    assert response.status_code == 500 and list(response.json()) == ["error"]
    assert "simulated model fault" not in response.text  # internals stay in the log
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


def test_docs_url_answers_and_the_spec_states_what_is_valid(client):
    response = client.get("/docs", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/"
    assert client.get("/docs").status_code == 200  # the Swagger UI
    spec = client.get("/docs.json").json()
    classify = spec["paths"]["/classify"]["post"]
    assert classify["requestBody"]["required"] is True and {"400", "413", "503"} <= set(classify["responses"])
    # 422 only where the named model may lack what the API needs (found by the contract fuzz test)
    assert "422" in classify["responses"] and "422" in spec["paths"]["/explain_image"]["post"]["responses"]
    assert "422" not in spec["paths"]["/equivariance"]["post"]["responses"]
    images = classify["requestBody"]["content"]["application/json"]["schema"]["properties"]["images"]
    assert [layout["maxItems"] for layout in images["oneOf"]] == [16, 16]
    assert images["oneOf"][0]["items"]["items"]["items"] == {"maximum": 1, "minimum": 0, "type": "number"}
    upload = spec["paths"]["/classify_image"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["properties"]["images"]["minItems"] == 1


def test_metadata_names_the_served_model(client, registered):
    meta = client.get("/metadata").json()
    assert meta["model_tag"] == str(registered.tag) and meta["batching"]["max_batch_size"] == 16
    assert meta["parity"]["passed"] is True


def test_metadata_is_a_get_in_the_server_and_in_its_openapi_document(client):
    posted = client.post("/metadata", json={})
    assert posted.status_code == 405 and posted.headers["allow"] == "GET" and "use GET" in posted.json()["error"]
    operations = client.get("/docs.json").json()["paths"]["/metadata"]
    assert set(operations) == {"get"} and "requestBody" not in operations["get"]
    assert operations["get"]["responses"]["200"]  # the answer's schema stays documented


def test_readiness_waits_for_the_protocol_servers(service):
    instance = service.CapsNetService()  # a second instance, outside BentoML's app
    assert instance._ready() is False
    instance.protocols = object()  # pretend the protocol servers are up
    assert instance._ready() is True


def test_every_answer_names_the_model_version_and_metadata_says_where_it_came_from(client, registered):
    image = np.zeros((1, 28, 28)).tolist()
    for route, body in (("/classify", {"images": image}), ("/infer", {"images": [image]}),
                        ("/explain", {"images": image}), ("/equivariance", {"image": image[0], "max_shift": 1})):
        answer = client.post(route, json=body)
        assert answer.status_code == 200 and answer.headers["x-capsnet-model"] == str(registered.tag), route
    pinned = client.post("/classify", json={"images": image, "model": str(registered.tag)})
    assert pinned.status_code == 200 and pinned.headers["x-capsnet-model"] == str(registered.tag)
    other = client.post("/classify", json={"images": image, "model": f"{registered.tag.name}:nope"})
    assert other.status_code == 404 and f"unknown model '{registered.tag.name}' version 'nope'" in other.json()["error"]
    described = client.get("/metadata").json()["models"][0]
    assert described["version"] == registered.tag.version and described["source"].endswith(".pt")
    assert described["validation_accuracy"] == registered.info.metadata["val_accuracy"]


def test_client_error_log_line_reads_like_the_others(client, caplog):
    with caplog.at_level(logging.INFO):
        client.post("/classify", json={"images": []})
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line == "POST /classify: 400 the batch is empty: send at least one image"


def test_every_api_that_runs_a_model_is_refused_when_its_queue_is_full_and_served_after(client, service):
    """The explorer's APIs run the model too (outside the batcher, 1-3 MB answers): with every place
    of the model's queue taken, each answers 503 + Retry-After at once, like classify; then 200."""
    image = (synthetic_digits(1, seed=2)[0][0].astype(np.float32) / 255.0).tolist()
    upload = [("images", ("d.png", png((np.asarray(image) * 255).astype(np.uint8)), "image/png"))]
    calls = {"/classify": {"json": {"images": [image]}}, "/classify_image": {"files": upload},
             "/explain": {"json": {"images": [image]}}, "/explain_image": {"files": upload},
             "/perturb": {"json": {"image": image}},
             "/equivariance": {"json": {"image": image, "max_shift": 1, "max_rotation": 10.0}},
             "/reconstruct": {"json": {"poses": []}}}
    admission, name = service.admission, service.DEFAULT
    facts = service.selection.facts[name]
    calls["/reconstruct"]["json"]["poses"] = [[[0.1] * facts.pose_dim] * len(facts.class_names)]
    with contextlib.ExitStack() as held:
        for _ in range(admission.max_queue):
            held.enter_context(admission.admit(name))
        for route, request in calls.items():
            refused = client.post(route, **request)
            assert refused.status_code == 503, (route, refused.text)
            assert refused.headers["retry-after"] == str(admission.retry_after_s) and "CAPSNET_MAX_QUEUE" in \
                refused.json()["error"]
    for route, request in calls.items():
        assert client.post(route, **request).status_code == 200, route
