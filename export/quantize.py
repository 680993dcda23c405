"""The INT8 graph of an export (`capsnet export --int8`) and the gate it must pass.

Static QDQ quantization with ONNX Runtime's tooling: signed 8-bit weights (per output channel) and
activations, calibrated on CALIBRATION_IMAGES *training* images drawn from a seed, for the Conv
layers only. The convolutions carry ~94 % of the graph's multiply-adds; the capsule transform, the
routing softmax and agreement, and squash stay in float32, where quantization errors would compound
over the routing iterations (capsule-network quantization papers keep routing precise, and so do we).

The gate compares the INT8 graph with the float32 graph beside it on the task's **validation** split:
the predicted objects (the top-k capsules, k = objects per input) must agree on at least
MIN_AGREEMENT of the inputs, and the task's accuracy may fall by at most MAX_ACCURACY_LOSS. The test
split's figures and the worst probability and pose differences are reported beside it, never used
to decide. The result is quantization.json; a failed gate writes and registers nothing (exit 1).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from export.onnx_io import open_session
from training.config import TrainConfig
from training.fileio import sha256_file
from training.tasks import training_data

log = logging.getLogger(__name__)

CALIBRATION_IMAGES, CALIBRATION_SEED, CALIBRATION_BATCH = 512, 0, 32
MIN_AGREEMENT, MAX_ACCURACY_LOSS = 0.998, 0.001
QUANTIZED_OPS = ["Conv"]
EVAL_BATCH = 500


class _Batches(CalibrationDataReader):
    """ONNX Runtime's calibration reader over float32 images [N, 1, S, S], in batches."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter([{"image": images[k:k + CALIBRATION_BATCH]}
                              for k in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def calibration_images(data: Any, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """`n` training inputs float32 [n, 1, S, S] in [0, 1], drawn (and augmented, as training does) from
    a seeded generator: the same images for every export of the same data."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(data), generator=generator)[:n]
    return data.train_batch(indices, generator).images.numpy().astype(np.float32)


def quantize(fp32_path: Path, int8_path: Path, calibration: np.ndarray) -> None:
    """Write the INT8 (QDQ, Conv only) graph of `fp32_path` to `int8_path`."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the tool's advice to pre-process goes to the root logger: the graph
    try:  # is already shape-inferred and optimised by our export, so it is noise for our users
        quantize_static(str(fp32_path), str(int8_path), _Batches(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPS)
    finally:
        root.setLevel(level)


def _outputs(session: ort.InferenceSession, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, K], poses [N, K, D]) of uint8 images [N, 1, S, S], in batches."""
    probabilities, poses = [], []
    for k in range(0, len(images), EVAL_BATCH):
        batch = images[k:k + EVAL_BATCH].float().numpy() / 255.0
        p, q = session.run(["probabilities", "poses"], {"image": batch.astype(np.float32)})
        probabilities.append(p)
        poses.append(q)
    return np.concatenate(probabilities), np.concatenate(poses)


def predicted_objects(probabilities: np.ndarray, objects: int) -> np.ndarray:
    """[N, K] -> [N, objects]: the classes of the `objects` longest capsules of each input, sorted."""
    return np.sort(np.argsort(-probabilities, axis=1, kind="stable")[:, :objects], axis=1)


def compare_split(fp32: ort.InferenceSession, int8: ort.InferenceSession, data: Any, images: torch.Tensor,
                  labels: torch.Tensor, objects: int) -> dict[str, Any]:
    """The two graphs on one split: agreement of the predicted objects, each one's accuracy (the
    task's own metric) and the worst differences."""
    p32, q32 = _outputs(fp32, images)
    p8, q8 = _outputs(int8, images)
    agreement = float((predicted_objects(p32, objects) == predicted_objects(p8, objects)).all(axis=1).mean())
    fp32_accuracy = float(data.metrics(torch.from_numpy(p32), labels)["accuracy"])
    int8_accuracy = float(data.metrics(torch.from_numpy(p8), labels)["accuracy"])
    return {"inputs": len(images), "agreement": agreement, "fp32_accuracy": fp32_accuracy,
            "int8_accuracy": int8_accuracy, "accuracy_loss": fp32_accuracy - int8_accuracy,
            "max_abs_probability_diff": float(np.abs(p32 - p8).max()),
            "max_abs_pose_diff": float(np.abs(q32 - q8).max())}


def task_data(train_config: dict[str, Any], data_dir: str | Path | None) -> Any:
    """The training run's data (its validation split carved as training carved it), from `data_dir`."""
    return training_data(TrainConfig.from_dict(train_config), data_dir)


def quantization_gate(fp32_path: Path, int8_path: Path, data: Any, objects: int, limit: int | None = None
                      ) -> dict[str, Any]:
    """The gate of the INT8 graph at `int8_path` against the float32 one at `fp32_path` on `data`
    (task_data): decided on the validation split (its first `limit` inputs with `limit`), the test
    split reported."""
    providers = ["CPUExecutionProvider"]  # the gate measures numerics, not speed: the same provider for both
    fp32, int8 = open_session(fp32_path, providers), open_session(int8_path, providers)
    splits = {}
    for split, (images, labels) in (("validation", data.validation_set()), ("test", data.test_set())):
        splits[split] = compare_split(fp32, int8, data, images[:limit], labels[:limit], objects)
    validation = splits["validation"]
    passed = validation["agreement"] >= MIN_AGREEMENT and validation["accuracy_loss"] <= MAX_ACCURACY_LOSS
    return {"passed": passed, "decided_on": "validation", "min_agreement": MIN_AGREEMENT,
            "max_accuracy_loss": MAX_ACCURACY_LOSS, "quantized_ops": QUANTIZED_OPS, "format": "QDQ",
            "weights": "int8, per channel", "activations": "int8",
            "calibration": {"images": CALIBRATION_IMAGES, "split": "train", "seed": CALIBRATION_SEED},
            "model": int8_path.name, "model_sha256": sha256_file(int8_path), "reference": fp32_path.name,
            "reference_sha256": sha256_file(fp32_path), "splits": splits}


def gate_failures(gate: dict[str, Any]) -> str:
    """What a failed gate missed, in one line per rule."""
    v = gate["splits"]["validation"]
    lines = []
    if v["agreement"] < gate["min_agreement"]:
        lines.append(f"agreement with float32 {100 * v['agreement']:.2f} % on {v['inputs']} validation inputs, "
                     f"below {100 * gate['min_agreement']:.1f} %")
    if v["accuracy_loss"] > gate["max_accuracy_loss"]:
        lines.append(f"validation accuracy {100 * v['int8_accuracy']:.2f} % against float32's "
                     f"{100 * v['fp32_accuracy']:.2f} %: a loss over {100 * gate['max_accuracy_loss']:.1f} point")
    return "\n".join(lines)


def quantize_and_gate(fp32_path: Path, int8_path: Path, train_config: dict[str, Any], objects: int,
                      data_dir: str | Path | None, limit: int | None = None) -> dict[str, Any]:
    """Calibrate on training images, write the INT8 graph to `int8_path` (in the export's staging
    folder: nothing reaches the export until the whole export succeeds), and return its gate."""
    data = task_data(train_config, data_dir)
    quantize(fp32_path, int8_path, calibration_images(data))
    return quantization_gate(fp32_path, int8_path, data, objects, limit)
