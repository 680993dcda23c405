"""What the service does, without BentoML: the served models, request validation, pre- and
post-processing and the response shapes. Torch-free and import-safe, so tests call it directly;
serving/service.py is the thin BentoML shell around it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, Field

from serving.preprocess import preprocess_encoded
from serving.runtime import CUDA, CapsNetRuntime
from serving.settings import ServingSettings
from serving.validation import InputError, validate_images


class ModelOutputError(RuntimeError):
    """The model produced values we refuse to return (NaN/Inf): a server fault, not the client's."""


class Prediction(BaseModel):
    label: int = Field(description="predicted class: the longest digit capsule")
    class_name: str
    probabilities: list[float] = Field(description="length of each class capsule, in [0, 1)")
    poses: list[list[float]] = Field(description="the class capsules' pose vectors [classes][pose dims]")


@dataclass
class ServedModel:
    """One registered export being served: its store tag, its metadata and its ONNX Runtime session."""

    tag: str  # name:version in the BentoML model store
    runtime: CapsNetRuntime
    metadata: dict[str, Any]  # the BentoML model's metadata (accuracies, parity summary, ...)

    @classmethod
    def load(cls, tag: str, path: str | Path, metadata: dict[str, Any], intra_op_threads: int = 0) -> ServedModel:
        return cls(tag, CapsNetRuntime(path, intra_op_threads=intra_op_threads), dict(metadata))

    @property
    def name(self) -> str:
        return self.tag.partition(":")[0]

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]

    @property
    def class_names(self) -> list[str]:
        return self.runtime.config["class_names"]

    @property
    def output_dims(self) -> dict[str, list[int]]:
        """Per output, its shape after the batch axis."""
        k = len(self.class_names)
        return {"probabilities": [k], "poses": [k, self.runtime.pose_dim]}


class ServingCore:
    """The served models (the first answers classify; more come with other tasks) and every step of
    a request that is not transport: validate, decode uploads, unpack batched outputs, shape responses."""

    def __init__(self, models: list[ServedModel], settings: ServingSettings) -> None:
        if not models:
            raise ValueError("ServingCore needs at least one model")
        self.models = models
        self.settings = settings

    @property
    def model(self) -> ServedModel:
        return self.models[0]

    def validate(self, images: Any) -> np.ndarray:
        """Client arrays -> float32 [N, 1, 28, 28]; InputError names what is wrong."""
        return validate_images(images, self.settings.max_batch_size)

    def decode_uploads(self, files: list[bytes]) -> np.ndarray:
        """Encoded PNG/JPEG files -> MNIST-like float32 [N, 1, 28, 28]; InputError names the bad file."""
        if not files:
            raise InputError("no image uploaded: send one or more files in the form field 'images'")
        if len(files) > self.settings.max_batch_size:
            raise InputError(f"{len(files)} images in one request; the limit is {self.settings.max_batch_size}")
        decoded = []
        for index, data in enumerate(files):
            try:
                decoded.append(preprocess_encoded(data))
            except InputError as e:
                raise InputError(f"image {index}: {e}") from None
        return np.stack(decoded)

    def infer_packed(self, images: np.ndarray) -> np.ndarray:
        """What the batchable API runs: validated [N, 1, 28, 28] -> [N, K + K*D]."""
        return self.model.runtime.infer_packed(images)

    def unpack(self, packed: Any) -> tuple[np.ndarray, np.ndarray]:
        """Batched output rows [N, K + K*D] -> (probabilities [N, K], poses [N, K, D]), all finite."""
        probabilities, poses = self.model.runtime.unpack(np.asarray(packed, np.float32))
        if not (np.isfinite(probabilities).all() and np.isfinite(poses).all()):
            raise ModelOutputError("the model produced non-finite values; refusing to return them")
        return probabilities, poses

    def predictions(self, probabilities: np.ndarray, poses: np.ndarray) -> list[Prediction]:
        names = self.model.class_names
        return [Prediction(label=int(k), class_name=names[k], probabilities=p.tolist(), poses=v.tolist())
                for k, p, v in zip(probabilities.argmax(axis=1), probabilities, poses, strict=True)]

    def gpu_ok(self) -> bool:
        return not self.settings.require_gpu or all(m.runtime.provider == CUDA for m in self.models)

    def metadata(self, batcher_in_process: bool) -> dict[str, Any]:
        """The `metadata` API's answer for the primary model."""
        model, s = self.model, self.settings
        config = model.runtime.config
        return {
            "model_tag": model.tag,
            "model_config": config["model_config"],
            "class_names": model.class_names,
            "routing_iters": config["routing_iters"],
            "outputs": model.output_dims,
            # only what the export recorded: a model from an interrupted run has no test accuracy
            "accuracy": {name: model.metadata[key] for name, key in (("validation", "val_accuracy"),
                         ("test", "test_accuracy")) if model.metadata.get(key) is not None},
            "parity": model.metadata.get("parity"),
            "provider": model.runtime.provider,
            "providers": model.runtime.session.get_providers(),
            "require_gpu": s.require_gpu,
            # the statistics are this worker's; /metrics has BentoML's adaptive_batch_size for all
            "batching": {"max_batch_size": s.max_batch_size, "max_latency_ms": s.max_latency_ms,
                         "workers": s.workers,
                         "in_process": batcher_in_process,  # false: the slower to_async fallback
                         **model.runtime.stats()},
            "grpc_port": s.grpc_port,
            "versions": {"onnxruntime": ort.__version__, "numpy": np.__version__,
                         "python": platform.python_version(), "exported_with": config.get("versions", {})},
        }
