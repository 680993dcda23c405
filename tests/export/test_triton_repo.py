"""A Triton model repository from an export: config.pbtxt parses as Triton's own ModelConfig and
declares exactly the graph's tensors; the parity report travels with the model."""

from __future__ import annotations

import json

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.onnx_export import export_onnx, main
from export.onnx_io import UnusableInputError
from export.triton_repo import write_triton_repository
from serving.oip.triton_config import labels_text

ELEM_TYPES = {mc.TYPE_FP32: onnx.TensorProto.FLOAT, mc.TYPE_INT64: onnx.TensorProto.INT64}


@pytest.fixture(scope="module")
def explorer_export(tiny_checkpoint, synthetic_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton-export")
    export_onnx(tiny_checkpoint, out, with_reconstruction=True, with_routing=True, data_dir=synthetic_data_dir,
                limit=8)
    return out


def parsed(folder) -> mc.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def assert_matches_graph(config: mc.ModelConfig, graph: onnx.ModelProto) -> None:
    for declared, values in ((config.input, graph.graph.input), (config.output, graph.graph.output)):
        assert [t.name for t in declared] == [v.name for v in values]
        for t, v in zip(declared, values, strict=True):
            shape = v.type.tensor_type.shape.dim
            assert shape[0].dim_param  # the batch axis, which Triton's dims leave out
            assert list(t.dims) == [d.dim_value for d in shape[1:]]
            assert ELEM_TYPES[t.data_type] == v.type.tensor_type.elem_type


def test_the_repository_declares_every_tensor_of_the_graph(explorer_export, tmp_path):
    folder = write_triton_repository(explorer_export, tmp_path / "repo")
    assert folder == tmp_path / "repo" / "capsnet-mnist"  # the task's served name
    config = parsed(folder)
    assert config.name == "capsnet-mnist" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    graph = onnx.load(str(folder / "1" / "model.onnx"))
    assert_matches_graph(config, graph)
    assert [t.name for t in config.output] == ["probabilities", "poses", "reconstruction", "routing",
                                               "primary_lengths"]
    assert list(config.input[0].dims) == [1, 28, 28] and list(config.output[1].dims) == [10, 8]
    # Triton's classification extension names classes from the label file of the output it ranks
    assert [t.label_filename for t in config.output] == ["labels.txt", "", "", "", ""]
    class_names = json.loads((explorer_export / "config.json").read_text())["class_names"]
    assert (folder / "labels.txt").read_text().splitlines() == class_names and len(class_names) == 10
    assert list(config.dynamic_batching.preferred_batch_size) == [32, 64]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, mc.ModelInstanceGroup.KIND_GPU)]
    assert (folder / "1" / "model.onnx").read_bytes() == (explorer_export / "model.onnx").read_bytes()
    parity = json.loads((folder / "parity.json").read_text())
    assert parity == json.loads((explorer_export / "parity.json").read_text()) and parity["passed"]


def test_writing_again_replaces_the_model_and_a_broken_export_writes_nothing(explorer_export, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repository(explorer_export, repo, name="digits")
    write_triton_repository(explorer_export, repo, name="digits", instance_kind="cpu")
    assert sorted(p.name for p in repo.iterdir()) == ["digits"]  # no staging or old folder left
    assert parsed(repo / "digits").instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(UnusableInputError):
        write_triton_repository(tmp_path / "broken", repo, name="broken")
    assert sorted(p.name for p in repo.iterdir()) == ["digits"]


@pytest.mark.slow
def test_capsnet_export_adds_a_pair_model_to_a_cpu_repository(tiny_pair_checkpoint, synthetic_data_dir, tmp_path):
    assert main([str(tiny_pair_checkpoint), "-o", str(tmp_path / "export"), "--no-register", "--limit", "8",
                 "--data-dir", str(synthetic_data_dir), "--no-explorer", "--with-top2-reconstructions",
                 "--triton-repo", str(tmp_path / "repo"), "--triton-instance", "cpu"]) == 0
    folder = tmp_path / "repo" / "capsnet-multimnist"
    config = parsed(folder)
    assert_matches_graph(config, onnx.load(str(folder / "1" / "model.onnx")))
    assert list(config.output[2].dims) == [2, 1, 36, 36]
    assert (folder / "labels.txt").read_text().splitlines() == [str(d) for d in range(10)]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_a_class_name_that_is_not_one_line_is_refused():
    assert labels_text(["T-shirt/top", "Ankle boot"]) == "T-shirt/top\nAnkle boot\n"
    for bad in (["one\ntwo"], ["ok", " "]):
        with pytest.raises(ValueError, match="single lines"):
            labels_text(bad)
