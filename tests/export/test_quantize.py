"""`capsnet export --int8`: the INT8 graph, its gate on the validation split, and what a failed gate
leaves (nothing); on the shipped MNIST weights, the gate passes on real digits."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import export.quantize
from export.onnx_export import QuantizationGateError, export_onnx
from export.onnx_export import main as export_main
from export.onnx_io import GATE_FILE, INT8_FILE
from export.quantize import predicted_objects
from export.verify import main as verify_main
from export.verify import verify_int8
from tests.helpers import REPO
from training.fileio import sha256_file


def test_predicted_objects_are_the_top_k_classes_in_order_of_class():
    p = np.array([[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.1, 0.7]])
    assert predicted_objects(p, 1).tolist() == [[1], [0]]
    assert predicted_objects(p, 2).tolist() == [[1, 2], [0, 3]]


def test_an_int8_export_writes_the_quantized_graph_and_its_gate(tiny_checkpoint, synthetic_data_dir, tmp_path,
                                                                 monkeypatch):
    # a tiny model barely trained has near-equal capsules, so its top class flips under any rounding:
    # the rules are opened here to see what a passing export writes (the real rules: the test below)
    monkeypatch.setattr(export.quantize, "MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(export.quantize, "MAX_ACCURACY_LOSS", 1.0)
    result = export_onnx(tiny_checkpoint, tmp_path, int8=True, data_dir=synthetic_data_dir, limit=64)
    assert {INT8_FILE, GATE_FILE} <= set(result["files"])
    graph = onnx.load(tmp_path / INT8_FILE)
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    quantized_inputs = {node.input[0] for node in graph.graph.node if node.op_type == "Conv"}
    dequantized = {node.output[0] for node in graph.graph.node if node.op_type == "DequantizeLinear"}
    assert quantized_inputs <= dequantized  # every Conv reads an INT8 tensor, dequantized
    gate = json.loads((tmp_path / GATE_FILE).read_text())
    assert gate["passed"] and gate["decided_on"] == "validation" and gate["calibration"]["split"] == "train"
    assert set(gate["splits"]) == {"validation", "test"} and gate["splits"]["validation"]["inputs"] == 64
    assert gate["reference"] == "model.onnx" and len(gate["model_sha256"]) == 64
    verify = ["--data-dir", str(synthetic_data_dir), "--limit", "64", "--no-download"]
    assert verify_main([str(tmp_path / INT8_FILE), str(tiny_checkpoint), *verify]) == 0
    scale_up_a_weight_scale(tmp_path / INT8_FILE, 1.5)  # any change to the file: not what the gate measured
    assert verify_main([str(tmp_path / INT8_FILE), str(tiny_checkpoint), *verify]) == 1


def scale_up_a_weight_scale(path, factor: float) -> None:
    """Multiply the scale of the first Conv weight's quantization by `factor`, in place."""
    from onnx import numpy_helper

    graph = onnx.load(path)
    conv_weight = next(n for n in graph.graph.node if n.op_type == "Conv").input[1]
    dequantize = next(n for n in graph.graph.node if n.output[0] == conv_weight)
    scale = next(i for i in graph.graph.initializer if i.name == dequantize.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * factor, scale.name))
    onnx.save(graph, path)


def test_a_failed_gate_writes_nothing_and_exits_1(tiny_checkpoint, synthetic_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export.quantize, "MIN_AGREEMENT", 1.01)  # no graph can agree more than always
    with pytest.raises(QuantizationGateError, match="agreement with float32"):
        export_onnx(tiny_checkpoint, tmp_path / "a", int8=True, data_dir=synthetic_data_dir, limit=32)
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    code = export_main([str(tiny_checkpoint), "-o", str(tmp_path / "b"), "--int8", "--no-register",
                        "--data-dir", str(synthetic_data_dir), "--limit", "32"])
    assert code == 1 and not any((tmp_path / "b").glob("*.onnx"))


@pytest.mark.slow
def test_the_shipped_mnist_weights_pass_the_int8_gate_on_real_digits(real_data_root, tmp_path):
    from training.weights_file import unpack_weights

    checkpoint = tmp_path / "best.pt"
    unpack_weights(REPO / "weights" / "capsnet-mnist-cpu-best.safetensors", checkpoint)
    export_onnx(checkpoint, tmp_path / "export", int8=True, data_dir=real_data_root, limit=1000)
    gate = json.loads((tmp_path / "export" / GATE_FILE).read_text())
    validation = gate["splits"]["validation"]
    assert gate["passed"] and validation["inputs"] == 1000
    assert validation["agreement"] >= 0.998 and validation["accuracy_loss"] <= 0.001
    # a tampered scale, with the recorded hash made to match: the gate, run again, catches the numbers
    int8 = tmp_path / "export" / INT8_FILE
    scale_up_a_weight_scale(int8, 4.0)
    gate["model_sha256"] = sha256_file(int8)
    (tmp_path / "export" / GATE_FILE).write_text(json.dumps(gate))
    assert verify_int8(int8, str(real_data_root), 1000) == 1


def test_a_pair_model_is_gated_on_both_of_its_objects(tiny_pair_checkpoint, synthetic_data_dir, tmp_path,
                                                       monkeypatch):
    monkeypatch.setattr(export.quantize, "MIN_AGREEMENT", 0.0)  # a tiny model: the rules opened, as above
    monkeypatch.setattr(export.quantize, "MAX_ACCURACY_LOSS", 1.0)
    export_onnx(tiny_pair_checkpoint, tmp_path, int8=True, with_top2=True, data_dir=synthetic_data_dir, limit=32)
    gate = json.loads((tmp_path / GATE_FILE).read_text())
    validation = gate["splits"]["validation"]
    # agreement counts an input only when both objects agree, so it is at most the share where the top one does
    assert gate["passed"] and 0.0 <= validation["agreement"] <= 1.0 and validation["inputs"] == 32
    assert validation["fp32_accuracy"] - validation["int8_accuracy"] == pytest.approx(validation["accuracy_loss"])


def test_an_int8_version_registers_beside_the_float32_one_and_serves_its_own_graph(tiny_checkpoint,
                                                                                  synthetic_data_dir, tmp_path,
                                                                                  monkeypatch):
    import bentoml

    from export.registry import RegistrationError, register_export
    from serving.engine.facts import ModelFacts
    from serving.engine.policies import StoredVersion, VersionPolicy
    from serving.engine.runtime import CapsNetRuntime

    monkeypatch.setattr(export.quantize, "MIN_AGREEMENT", 0.0)  # a tiny model: the rules opened, as above
    monkeypatch.setattr(export.quantize, "MAX_ACCURACY_LOSS", 1.0)
    export_onnx(tiny_checkpoint, tmp_path / "both", int8=True, data_dir=synthetic_data_dir, limit=32)
    fp32 = bentoml.models.get(register_export(tmp_path / "both", "capsnet-precision"))
    int8 = bentoml.models.get(register_export(tmp_path / "both", "capsnet-precision", precision="int8"))
    assert (fp32.info.metadata["precision"], int8.info.metadata["precision"]) == ("fp32", "int8")
    gate = json.loads((tmp_path / "both" / GATE_FILE).read_text())
    assert int8.info.metadata["val_accuracy"] == gate["splits"]["validation"]["int8_accuracy"]
    assert ModelFacts.read(int8.path).model_file == INT8_FILE and ModelFacts.read(fp32.path).model_file == "model.onnx"
    # the server runs the INT8 graph for that version: its answers are that file's, to the last bit
    images = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    served = CapsNetRuntime(int8.path).infer(images)["probabilities"]
    direct = ort.InferenceSession(int8.path_of(INT8_FILE), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(served, direct.run(["probabilities"], {"image": images})[0])
    # best: on equal validation accuracy float32 serves; INT8 only when it measured better
    old, new = datetime(2026, 1, 1), datetime(2026, 1, 2)
    tie = [StoredVersion("m", "f", old, 0.99, "fp32"), StoredVersion("m", "q", new, 0.99, "int8")]
    assert [v.version for v in VersionPolicy().select(tie)] == ["f"]
    better = [StoredVersion("m", "f", old, 0.99, "fp32"), StoredVersion("m", "q", new, 0.995, "int8")]
    assert [v.version for v in VersionPolicy().select(better)] == ["q"]
    plain = tmp_path / "plain"  # an export made without --int8
    shutil.copytree(tmp_path / "both", plain)
    (plain / INT8_FILE).unlink()
    with pytest.raises(RegistrationError, match="export with capsnet export --int8"):
        register_export(plain, "capsnet-precision", precision="int8")
    failed = json.loads((plain / GATE_FILE).read_text())
    (plain / GATE_FILE).write_text(json.dumps({**failed, "passed": False}))
    shutil.copy2(tmp_path / "both" / INT8_FILE, plain / INT8_FILE)
    with pytest.raises(RegistrationError, match="the INT8 gate failed"):
        register_export(plain, "capsnet-precision", precision="int8")
