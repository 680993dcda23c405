import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import export.onnx_export
from export.onnx_export import CONTROL_FLOW, ParityError, export_onnx
from export.onnx_export import main as export_main
from export.onnx_io import read_metadata
from export.parity import degenerate_images, verify_parity
from export.parity_report import failure_summary
from export.verify import main as verify_main
from serving.engine.providers import cuda_usable
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import synthetic_digits


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, synthetic_data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export_onnx(tiny_checkpoint, out, with_reconstruction=True, with_routing=True, data_dir=synthetic_data_dir)
    return out


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def tamper_largest_weight(source: Path, target: Path) -> None:
    """Copy an ONNX file with one value of its largest weight tensor moved by 0.5."""
    model = onnx.load(str(source))
    weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(weights).copy()
    array.flat[0] += 0.5
    weights.CopyFrom(numpy_helper.from_array(array, weights.name))
    onnx.save(model, str(target))


def test_export_writes_one_self_contained_graph_without_control_flow(exported):
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.onnx", "parity.json"]
    model = onnx.load(str(exported / "model.onnx"))
    assert not CONTROL_FLOW & {n.op_type for n in model.graph.node}
    (image,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and isinstance(dims[0], str) and dims[1:] == [1, 28, 28]
    assert [o.name for o in model.graph.output] == ["probabilities", "poses", "reconstruction", "routing",
                                                    "primary_lengths"]
    meta = read_metadata(model)
    assert meta["routing_iters"] == 3 and meta["class_names"] == [str(d) for d in range(10)]
    assert meta["opset"] == 18 and meta["precision"] == "fp32" and "torch" in meta["versions"]
    assert len(meta["checkpoint_sha256"]) == 64 and "best_val_accuracy" in meta["train_metrics"]


def test_parity_json_records_what_was_compared(exported):
    report = json.loads((exported / "parity.json").read_text())
    assert report["passed"]
    assert report["inputs"]["degenerate"] == ["all_black", "all_white", "single_pixel", "noise"]
    (section,) = report["sections"]
    assert section["tolerance"] == {"rtol": 1e-4, "atol": 1e-5}
    assert sorted(section["batch_sizes"], key=int) == ["1", "7", "64", "256"]
    for result in section["batch_sizes"].values():
        assert result["argmax_agreement"] == 1.0
        for check in result["outputs"].values():
            assert check["shape_ok"] and check["dtype_ok"] and check["finite"] and check["violations"] == 0
    assert {"torch", "onnx", "onnxruntime"} <= set(report["versions"])


def test_graph_takes_batch_1_and_256_and_stays_finite_on_degenerate_images(exported):
    s = session(exported / "model.onnx")
    for batch in (1, 256):
        images = np.random.rand(batch, 1, 28, 28).astype(np.float32)
        probs, poses, recon, routing, parts = s.run(None, {"image": images})
        assert probs.shape == (batch, 10) and poses.shape == (batch, 10, 8)
        assert recon.shape == (batch, 1, 28, 28) and routing.shape == (batch, 72, 10) and parts.shape == (batch, 72)
        np.testing.assert_allclose(routing.sum(axis=2), 1.0, rtol=1e-5)
        assert (parts >= 0).all() and (parts < 1).all()  # squashed lengths
    for name, image in degenerate_images().items():
        outputs = s.run(None, {"image": image})
        assert all(np.isfinite(o).all() for o in outputs), name


def test_squash_of_a_zero_vector_is_finite_in_the_exported_graph(tiny_checkpoint, synthetic_data_dir, tmp_path):
    # Zero biases + a black image make every capsule exactly zero: squash(0) must give 0, not NaN.
    ckpt = load_checkpoint(tiny_checkpoint)
    for name in ("conv1.bias", "primary.bias"):
        ckpt["model_state"][name].zero_()
    save_checkpoint(tmp_path / "zero.pt", ckpt)
    export_onnx(tmp_path / "zero.pt", tmp_path / "out", data_dir=synthetic_data_dir, limit=16)
    probs, poses = session(tmp_path / "out" / "model.onnx").run(None, {"image": np.zeros((1, 1, 28, 28), np.float32)})
    assert np.isfinite(probs).all() and np.isfinite(poses).all()
    assert np.abs(poses).max() == 0.0


def test_fp16_export_has_its_own_looser_section(tiny_checkpoint, synthetic_data_dir, tmp_path):
    result = export_onnx(tiny_checkpoint, tmp_path, fp16=True, data_dir=synthetic_data_dir, limit=64)
    assert (tmp_path / "model.fp16.onnx").is_file()
    precisions = {s["precision"]: s for s in result["parity"]["sections"]}
    assert precisions["fp16"]["tolerance"] == {"rtol": 1e-2, "atol": 1e-3} and precisions["fp16"]["passed"]
    s = session(tmp_path / "model.fp16.onnx")
    assert s.get_inputs()[0].type == "tensor(float)" and s.get_outputs()[0].type == "tensor(float)"
    initializers = onnx.load(str(tmp_path / "model.fp16.onnx")).graph.initializer
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in initializers)


def test_verify_cli_passes_on_a_good_export(exported, tiny_checkpoint, synthetic_data_dir, tmp_path):
    code = verify_main([str(exported / "model.onnx"), str(tiny_checkpoint),
                        "--data-dir", str(synthetic_data_dir), "-o", str(tmp_path / "r.json")])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["inputs"]["kind"] == "test-split" and len(report["inputs"]["sha256"]) == 64


def test_verify_downloads_a_missing_test_split_and_says_loudly_when_it_cannot(exported, tiny_checkpoint, tmp_path,
                                                                              monkeypatch, caplog):
    import export.parity

    asked = []

    def offline(dataset, data_dir=None, mirrors=None):
        asked.append(dataset)
        raise export.parity.DataUnavailableError(f"{dataset}: t10k-images-idx3-ubyte.gz could not be downloaded")

    monkeypatch.setattr(export.parity, "ensure_dataset", offline)
    empty = tmp_path / "no-data"
    args = [str(exported / "model.onnx"), str(tiny_checkpoint), "--data-dir", str(empty), "--limit", "16",
            "-o", str(tmp_path / "r.json")]
    with caplog.at_level(logging.WARNING):
        assert verify_main(args) == 0
    assert asked == ["mnist"]  # it tried to fetch the test split
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["inputs"]["kind"] == "synthetic" and "could not be downloaded" in report["inputs"]["source"]
    assert any("SYNTHETIC" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    asked.clear()
    assert verify_main([*args, "--no-download"]) == 0 and asked == []  # --no-download: no attempt


def test_verify_fails_for_other_routing_depth(tiny_checkpoint, synthetic_data_dir, tmp_path):
    export_onnx(tiny_checkpoint, tmp_path, routing_iters=2, data_dir=synthetic_data_dir, limit=32)
    assert read_metadata(onnx.load(str(tmp_path / "model.onnx")))["routing_iters"] == 2
    code = verify_main([str(tmp_path / "model.onnx"), str(tiny_checkpoint),
                        "--data-dir", str(synthetic_data_dir), "--limit", "32"])
    assert code == 1


def test_verify_fails_when_one_weight_changed(exported, tiny_checkpoint, synthetic_data_dir, tmp_path):
    tamper_largest_weight(exported / "model.onnx", tmp_path / "tampered.onnx")
    report = verify_parity(tmp_path / "tampered.onnx", tiny_checkpoint, data_dir=synthetic_data_dir, limit=64)
    assert not report["passed"]
    assert "outside rtol" in failure_summary(report)
    assert verify_main([str(tmp_path / "tampered.onnx"), str(tiny_checkpoint),
                        "--data-dir", str(synthetic_data_dir), "--limit", "64"]) == 1


def test_verify_unusable_inputs_exit_2(exported, tiny_checkpoint, synthetic_data_dir, tmp_path):
    data = (exported / "model.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    ckpt = tiny_checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(ckpt[: len(ckpt) // 2])
    other = load_checkpoint(tiny_checkpoint)
    other["model_config"] = {**other["model_config"], "digit_dim": 16}
    other["model_state"] = {k: v for k, v in other["model_state"].items()}
    torch.save(other, tmp_path / "other.pt")
    args = ["--data-dir", str(synthetic_data_dir), "--limit", "8"]
    onnx_file, good_ckpt = str(exported / "model.onnx"), str(tiny_checkpoint)
    assert verify_main([str(tmp_path / "cut.onnx"), good_ckpt, *args]) == 2
    assert verify_main([onnx_file, str(tmp_path / "cut.pt"), *args]) == 2
    assert verify_main([str(tmp_path / "missing.onnx"), good_ckpt, *args]) == 2
    assert verify_main([onnx_file, str(tmp_path / "other.pt"), *args]) == 2


def test_failed_parity_leaves_nothing_and_registers_nothing(tiny_checkpoint, synthetic_data_dir, tmp_path,
                                                            monkeypatch):
    import bentoml

    real_check = export.onnx_export.check_parity

    def against_a_perturbed_reference(model, *args, **kwargs):
        with torch.no_grad():
            model.digit_weights.mul_(1.5)
        return real_check(model, *args, **kwargs)

    monkeypatch.setattr(export.onnx_export, "check_parity", against_a_perturbed_reference)
    before = {str(m.tag) for m in bentoml.models.list()}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user file")
    with pytest.raises(ParityError, match="'probabilities'.*worst at"):
        export_onnx(tiny_checkpoint, tmp_path / "out", data_dir=synthetic_data_dir, limit=16)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    code = export_main([str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--data-dir",
                        str(synthetic_data_dir), "--limit", "16"])
    assert code == 1
    assert {str(m.tag) for m in bentoml.models.list()} == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_export_reads_and_hashes_the_checkpoint_once(tiny_checkpoint, synthetic_data_dir, tmp_path, monkeypatch):
    import sys

    calls = {"load_checkpoint": 0, "sha256_file": 0}

    def counting(name, real):
        def wrapper(path, *args, **kwargs):
            calls[name] += Path(path) == Path(tiny_checkpoint)
            return real(path, *args, **kwargs)
        return wrapper

    for module in [m for n, m in sys.modules.items() if n.split(".")[0] in ("export", "training")]:
        for name in calls:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counting(name, getattr(module, name)))
    export_onnx(tiny_checkpoint, tmp_path, fp16=True, routing_iters=2, data_dir=synthetic_data_dir, limit=8)
    assert calls == {"load_checkpoint": 1, "sha256_file": 1}
    assert not list(tmp_path.glob("*.pt")), "no temporary checkpoint written back to disk"


def test_registry_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, export.registry; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0


def test_register_stores_model_with_parity_metadata(tiny_checkpoint, tmp_path, capsys):
    import bentoml

    # a data folder without MNIST files: parity runs on generated stand-ins, and the labels say so
    code = export_main([str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--data-dir", str(tmp_path / "no-data"),
                        "--limit", "16", "--name", "capsnet-test"])
    assert code == 0
    tag = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    model = bentoml.models.get(tag)
    assert model.tag.name == "capsnet-test"
    assert model.info.labels["parity"] == "passed" and model.info.labels["routing_iters"] == "3"
    assert model.info.labels["parity_inputs"] == "synthetic"
    assert model.info.metadata["parity"]["inputs_kind"] == "synthetic"
    assert model.info.metadata["parity"]["passed"] is True
    assert model.info.metadata["parity"]["sections"][0]["argmax_agreement"] == 1.0
    for name in ("model.onnx", "parity.json", "config.json"):
        assert Path(model.path_of(name)).is_file()


def test_an_export_proven_on_real_digits_is_labelled_so(tiny_checkpoint, real_data_root, tmp_path):
    import bentoml

    from export.registry import register_export

    result = export_onnx(tiny_checkpoint, tmp_path, data_dir=real_data_root, limit=16)
    assert result["parity"]["inputs"]["kind"] == "test-split"
    model = bentoml.models.get(register_export(tmp_path, "capsnet-real"))
    assert model.info.labels["parity_inputs"] == "test-split"
    assert model.info.metadata["parity"]["inputs_kind"] == "test-split"


@pytest.mark.skipif(not cuda_usable(), reason="needs a CUDA GPU with onnxruntime-gpu")
@pytest.mark.gpu
def test_cuda_parity_section(exported):
    report = json.loads((exported / "parity.json").read_text())
    providers = [s["provider"] for s in report["sections"]]
    assert "CUDAExecutionProvider" in providers and all(s["passed"] for s in report["sections"])


def test_a_two_digit_model_exports_with_parity_on_pairs_and_registers_as_multimnist(
        tiny_pair_checkpoint, synthetic_data_dir, tmp_path, capsys):
    import bentoml

    code = export_main([str(tiny_pair_checkpoint), "-o", str(tmp_path), "--data-dir", str(synthetic_data_dir),
                        "--limit", "24"])  # a pair model's default export redraws both digits too
    assert code == 0
    tag = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert tag.startswith("capsnet-multimnist:")
    model = onnx.load(str(tmp_path / "model.onnx"))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [1, 36, 36]
    meta = read_metadata(model)
    assert meta["task"]["name"] == "multimnist" and meta["task"]["objects"] == 2 and meta["task"]["multi_label"]
    assert meta["task"]["kind"] == "overlapping-digit-pairs" and meta["input"]["shape"][2:] == [36, 36]
    parity_report = json.loads((tmp_path / "parity.json").read_text())
    assert parity_report["passed"] and "overlapping pair" in parity_report["inputs"]["source"]
    assert parity_report["inputs"]["total"] == 24 + 4
    graph = session(tmp_path / "model.onnx")
    (top2,) = graph.run(["reconstructions_top2"], {"image": np.random.rand(3, 1, 36, 36).astype(np.float32)})
    assert top2.shape == (3, 2, 1, 36, 36) and (tmp_path / "decoder.onnx").is_file()
    assert meta["outputs"] == ["probabilities", "poses", "reconstruction", "routing", "primary_lengths",
                               "reconstructions_top2"]
    stored = bentoml.models.get(tag)
    assert stored.info.labels["task"] == "overlapping-digit-pairs" and stored.info.metadata["task"]["objects"] == 2
    assert verify_main([str(tmp_path / "model.onnx"), str(tiny_pair_checkpoint),
                        "--data-dir", str(synthetic_data_dir), "--limit", "24"]) == 0


@pytest.fixture(scope="module")
def exported_for_explorer(tiny_checkpoint, synthetic_data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export-explorer")
    assert export_main([str(tiny_checkpoint), "-o", str(out), "--no-register",  # the explorer's graphs by default
                        "--data-dir", str(synthetic_data_dir), "--limit", "64"]) == 0
    return out


def test_the_explorer_export_adds_a_decoder_graph_with_its_own_parity(exported_for_explorer):
    config = json.loads((exported_for_explorer / "config.json").read_text())
    assert config["outputs"] == ["probabilities", "poses", "reconstruction", "routing", "primary_lengths"]
    assert config["decoder"]["file"] == "decoder.onnx" and config["decoder"]["outputs"] == ["image"]
    decoder = session(exported_for_explorer / "decoder.onnx")
    assert [(i.name, i.type) for i in decoder.get_inputs()] == [("poses", "tensor(float)"), ("label", "tensor(int64)")]
    assert decoder.get_inputs()[0].shape == ["batch", 10, 8] and decoder.get_outputs()[0].shape == ["batch", 1, 28, 28]
    report = json.loads((exported_for_explorer / "parity.json").read_text())
    by_graph = {s["graph"]: s for s in report["sections"]}
    assert set(by_graph) == {"model.onnx", "decoder.onnx"} and report["passed"]
    assert set(by_graph["decoder.onnx"]["batch_sizes"]["7"]["outputs"]) == {"image"}
    assert set(report["models"]) == {"model.onnx", "decoder.onnx"}


def test_the_decoder_redraws_the_models_own_reconstruction(exported_for_explorer, synthetic_data_dir):
    images = synthetic_digits(12, seed=5)[0][:, None].astype(np.float32) / 255.0
    probabilities, poses, reconstruction = session(exported_for_explorer / "model.onnx").run(
        ["probabilities", "poses", "reconstruction"], {"image": images})
    (redrawn,) = session(exported_for_explorer / "decoder.onnx").run(
        None, {"poses": poses, "label": probabilities.argmax(1).astype(np.int64)})
    np.testing.assert_allclose(redrawn, reconstruction, rtol=0, atol=1e-5)
    (other,) = session(exported_for_explorer / "decoder.onnx").run(
        None, {"poses": poses, "label": (probabilities.argmax(1) + 1).astype(np.int64) % 10})
    # the label chooses which capsule is drawn (the 8-step test model's decoder barely varies: ~2e-4)
    assert np.abs(other - reconstruction).max() > 1e-5


def test_verify_fails_when_one_decoder_weight_changed(exported_for_explorer, tiny_checkpoint, synthetic_data_dir,
                                                      tmp_path):
    assert verify_parity(exported_for_explorer / "decoder.onnx", tiny_checkpoint, data_dir=synthetic_data_dir,
                         limit=32)["passed"]
    tamper_largest_weight(exported_for_explorer / "decoder.onnx", tmp_path / "tampered.onnx")
    report = verify_parity(tmp_path / "tampered.onnx", tiny_checkpoint, data_dir=synthetic_data_dir, limit=32)
    assert not report["passed"] and "tampered.onnx fp32 on CPUExecutionProvider" in failure_summary(report)


def test_a_translated_mnist_model_exports_with_parity_on_its_40px_inputs(synthetic_data_dir, tmp_path):
    from training.config import TrainConfig
    from training.train import train

    config = TrainConfig(variant="tiny", dataset="translated-mnist", max_shift=6, epochs=1, batch_size=32,
                         val_size=120, device="cpu", max_steps=3)
    train(config, tmp_path / "run", synthetic_data_dir, progress=False)
    result = export_onnx(tmp_path / "run" / "last.pt", tmp_path / "export", data_dir=synthetic_data_dir, limit=16)
    assert result["parity"]["passed"] and "placement (max shift 6)" in result["parity"]["inputs"]["source"]
    meta = read_metadata(onnx.load(str(tmp_path / "export" / "model.onnx")))
    assert meta["input"]["shape"][2:] == [40, 40] and meta["task"]["objects"] == 1


@pytest.mark.parametrize("reference, candidate, where", [
    ([np.nan, 0.1], [0.3, 0.1], "PyTorch reference"), ([np.inf, 0.1], [0.3, 0.1], "PyTorch reference"),
    ([0.3, 0.1], [np.nan, 0.1], "ONNX output"), ([np.nan, 0.1], [np.nan, 0.1], "PyTorch reference")])
def test_a_nan_or_infinity_on_either_side_fails_parity(reference, candidate, where):
    from export.parity_report import Tolerance, compare
    result = compare(np.array(reference, np.float32), np.array(candidate, np.float32), Tolerance(rtol=1e-3, atol=1e-5))
    assert not result["passed"] and result["violations"] >= 1 and result["worst"]["index"] == [0]
    report = {"sections": [{"precision": "fp32", "provider": "CPUExecutionProvider",
                            "tolerance": {"rtol": 1e-3, "atol": 1e-5}, "batch_sizes": {
                                "1": {"missing_outputs": [], "outputs": {"probabilities": result},
                                      "argmax_agreement": 1.0}}}]}
    assert where in failure_summary(report)
    assert compare(np.array([0.3, 0.1], np.float32), np.array([0.3, 0.1], np.float32),
                   Tolerance(rtol=1e-3, atol=1e-5))["passed"]
