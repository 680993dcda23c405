"""Golden outputs of a fixed tiny model: catches drift in the model code or in the export."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.inference_graph import ALL_OUTPUTS, InferenceGraph
from export.onnx_export import export_graph
from tests.export.make_golden import GOLDEN, golden_inputs
from training.config import variant_config
from training.model import CapsNet

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN)
    model = CapsNet(variant_config("tiny")).eval()
    model.load_state_dict({k[len("weight/"):]: torch.from_numpy(data[k]) for k in data if k.startswith("weight/")})
    return model, data


def test_golden_inputs_are_reproducible(golden):
    np.testing.assert_array_equal(golden[1]["images"], golden_inputs())


def test_pytorch_matches_golden(golden):
    model, data = golden
    with torch.no_grad():
        outputs = InferenceGraph(model, ALL_OUTPUTS)(torch.from_numpy(data["images"]))
    for name, out in zip(ALL_OUTPUTS, outputs, strict=True):
        np.testing.assert_allclose(out.numpy(), data[f"output/{name}"], rtol=RTOL, atol=ATOL, err_msg=name)


def test_exported_graph_matches_golden(golden, tmp_path):
    model, data = golden
    export_graph(InferenceGraph(model, ALL_OUTPUTS), tmp_path / "golden.onnx", {})
    session = ort.InferenceSession(str(tmp_path / "golden.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(list(ALL_OUTPUTS), {"image": data["images"]})
    for name, out in zip(ALL_OUTPUTS, outputs, strict=True):
        np.testing.assert_allclose(out, data[f"output/{name}"], rtol=RTOL, atol=ATOL, err_msg=name)
