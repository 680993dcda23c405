"""serving/handlers/classify.py without BentoML or a server: validation, uploads, responses, metadata."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from serving.engine.version import ModelVersion
from serving.errors import InputError, ModelOutputError, UnknownModelError
from serving.handlers.classify import Classifier
from serving.handlers.describe import metadata_document
from serving.settings import ServingSettings
from tests.helpers import REPO, encoded
from tests.serving.server import direct_outputs


@pytest.fixture(scope="module")
def core(registered) -> Classifier:
    settings = ServingSettings(max_batch_size=4)
    return Classifier.of([ModelVersion.load(str(registered.tag), registered.path, registered.info.metadata,
                                            settings.batching)], settings)


def test_predictions_match_onnx_runtime_on_the_model_file(core, registered):
    images = core.validate(np.random.default_rng(0).random((3, 28, 28)))
    outputs = asyncio.run(core.predict(images))
    # the reference is a session of its own on the registered file, not the runtime the core wraps
    direct = direct_outputs(registered, images)
    np.testing.assert_array_equal(outputs["probabilities"], direct["probabilities"])
    np.testing.assert_array_equal(outputs["poses"], direct["poses"])
    answers = core.predictions(outputs)
    assert [a.label for a in answers] == direct["probabilities"].argmax(1).tolist()
    assert answers[0].class_name == core.model.facts.class_names[answers[0].label]
    assert [o.label for o in answers[0].objects] == [answers[0].label]  # a digit model finds one object
    assert answers[0].objects[0].length == pytest.approx(max(answers[0].probabilities))
    with pytest.raises(InputError, match="exported without reconstructions"):
        core.predictions(outputs, reconstructions=True)


def test_uploads_are_decoded_and_bad_ones_named(core):
    blank = encoded(np.full((40, 30), 255, np.uint8))
    assert core.decode_uploads([blank] * 2).shape == (2, 1, 28, 28)
    with pytest.raises(InputError, match="image 1: cannot decode"):
        core.decode_uploads([blank, b"garbage"])
    with pytest.raises(InputError, match="no image uploaded"):
        core.decode_uploads([])
    with pytest.raises(InputError, match="limit is 4"):
        core.decode_uploads([blank] * 5)
    with pytest.raises(InputError, match="limit is 4"):
        core.validate(np.zeros((5, 28, 28)))


def test_non_finite_model_outputs_are_refused(core, monkeypatch):
    model = core.model
    real = model.runtime.infer

    def broken(images):
        outputs = real(images)
        outputs["poses"][0, 3] = np.nan
        return outputs

    monkeypatch.setattr(model.batcher, "run", broken)
    with pytest.raises(ModelOutputError):
        asyncio.run(core.predict(np.zeros((1, 1, 28, 28), np.float32)))


def test_metadata_and_several_models(core, registered):
    meta = metadata_document(core)
    assert meta["model_tag"] == str(registered.tag) and meta["outputs"] == {"probabilities": [10], "poses": [10, 8]}
    assert meta["batching"]["max_batch_size"] == 4 and meta["version_policy"] == "best"
    assert meta["parity"]["passed"] is True and "test" not in meta["accuracy"]  # 8-step model: no test run
    described = meta["models"][0]
    assert described["version"] == registered.tag.version and described["source"].endswith(".pt")  # its checkpoint
    assert described["training"]["variant"] and described["validation_accuracy"] == registered.info.metadata[
        "val_accuracy"]
    assert described["precision"] == "fp32"  # an INT8 version says int8 (tests/export/test_quantize.py)
    second = ModelVersion.load("other:v2", registered.path, {}, core.settings.batching)
    both = Classifier.of([core.model, second], core.settings)
    assert [m.tag for m in both.models] == [str(registered.tag), "other:v2"] and both.model is core.model
    assert (second.name, second.version) == ("other", "v2")
    with pytest.raises(ValueError):
        Classifier.of([], core.settings)
    assert both.model_named("other") is second and both.model_named(None) is core.model
    assert both.model_named("other:v2") is second
    with pytest.raises(UnknownModelError, match="serves .*'other' version 'v2'"):
        both.model_named("nope")
    with pytest.raises(UnknownModelError, match="'other' version 'v1'"):
        both.model_named("other:v1")


def test_the_serving_core_imports_neither_torch_nor_training():
    code = ("import sys, serving.handlers.classify, serving.bento.middleware, serving.oip.listeners; "
            "sys.exit(any(m == 'torch' or m.startswith('training') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


@pytest.mark.parametrize("providers, gpus, preload_error, words", [
    (["CPUExecutionProvider"], 1, None, "no CUDA provider"),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], 0, None, "no NVIDIA GPU is visible"),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], 1, OSError("libcudnn.so.9: cannot open shared object file"),
     "libcudnn.so.9"),
])
def test_why_cuda_is_not_used_is_said_in_words(monkeypatch, registered, caplog, providers, gpus, preload_error, words):
    import logging

    import serving.engine.providers as providers_module
    import serving.engine.runtime as runtime

    def preload() -> None:
        if preload_error:
            raise preload_error

    monkeypatch.setattr(providers_module.ort, "get_available_providers", lambda: providers)
    monkeypatch.setattr(providers_module, "gpu_count", lambda: gpus)
    monkeypatch.setattr(providers_module.ort, "preload_dlls", preload)
    assert words in providers_module.cuda_unavailable_reason()
    with caplog.at_level(logging.INFO, logger="serving.engine.runtime"):
        served = runtime.CapsNetRuntime(registered.path)
    assert served.provider == "CPUExecutionProvider" and words in served.cuda_unavailable
    assert any("CUDA not used" in r.getMessage() and words in r.getMessage() for r in caplog.records)


def test_cuda_is_asked_for_when_it_can_work(monkeypatch, registered):
    import serving.engine.runtime as runtime

    asked = []
    real_session = runtime.ort.InferenceSession

    def recording_session(path, options, providers):
        asked.append(providers)
        return real_session(path, options, providers=["CPUExecutionProvider"])  # no GPU here to really use

    monkeypatch.setattr(runtime, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(runtime.ort, "InferenceSession", recording_session)
    served = runtime.CapsNetRuntime(registered.path)
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"]] * 2  # model.onnx and decoder.onnx
    assert "did not create its CUDA provider" in served.cuda_unavailable  # what we got is read back
