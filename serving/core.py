"""What the service does, without BentoML: the served models, request validation, pre- and
post-processing and the response shapes. Torch-free and import-safe, so tests call it directly;
serving/service.py is the thin BentoML shell around it.
"""

from __future__ import annotations

import logging
import os
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
from serving.validation import CapabilityError, InputError, validate_images

log = logging.getLogger(__name__)


def require_finite(*arrays: np.ndarray) -> None:
    """Model outputs must be finite before anyone sees them (the HTTP, gRPC and explorer answers)."""
    if not all(np.isfinite(a).all() for a in arrays):
        raise ModelOutputError("the model produced non-finite values; refusing to return them")


def task_of(description: dict[str, Any]) -> dict[str, Any]:
    """The task an export's config.json or store metadata records; exports from before tasks were
    recorded held one object per input."""
    return description.get("task", {"objects": 1, "name": "single-object"})


class ModelOutputError(RuntimeError):
    """The model produced values we refuse to return (NaN/Inf): a server fault, not the client's."""


class UnknownModelError(LookupError):
    """A request named a model this server does not serve (HTTP 404, gRPC NOT_FOUND)."""


class FoundObject(BaseModel):
    label: int = Field(description="the class of this capsule")
    class_name: str
    length: float = Field(description="the capsule's length: how sure the model is the object is there")
    pose: list[float] = Field(description="the capsule's pose vector")
    reconstruction: list[list[list[float]]] | None = Field(
        default=None, description="[1][S][S] the decoder's drawing of this object alone (on request)")


class Prediction(BaseModel):
    label: int = Field(description="predicted class: the longest digit capsule")
    class_name: str
    probabilities: list[float] = Field(description="length of each class capsule, in [0, 1)")
    poses: list[list[float]] = Field(description="the class capsules' pose vectors [classes][pose dims]")
    objects: list[FoundObject] = Field(description="the objects found: the model's task says how many "
                                                   "(1 for a digit, 2 for an overlapping pair), longest first")


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
    def image_size(self) -> int:
        return self.runtime.image_size

    @property
    def objects(self) -> int:
        """How many objects one input holds (the export's task; exports before tasks held one)."""
        return int(task_of(self.runtime.config)["objects"])

    @property
    def output_dims(self) -> dict[str, list[int]]:
        return self.runtime.output_dims

    def describe(self) -> dict[str, Any]:
        """What a client needs to call this model."""
        return {"model_tag": self.tag, "name": self.name, "input_size": [1, self.image_size, self.image_size],
                "task": task_of(self.runtime.config),
                "class_names": self.class_names, "outputs": self.output_dims,
                "reconstructions": "reconstructions_top2" in self.output_dims,
                "pose_dims": self.runtime.pose_dim,
                # explain/reconstruct/perturb work (capsnet export's default); equivariance works always
                "explorer": self.runtime.decoder is not None
                and {"reconstruction", "routing", "primary_lengths"} <= set(self.runtime.graph_outputs)}


class ServingCore:
    """The served models and every step of a request that is not transport: choose the model,
    validate, decode uploads, unpack batched outputs, shape responses. The default model (what a
    request that names none gets) is the first single-object one, else the first."""

    def __init__(self, models: list[ServedModel], settings: ServingSettings) -> None:
        if not models:
            raise ValueError("ServingCore needs at least one model")
        self.models = models
        self.settings = settings
        self.default = next((m for m in models if m.objects == 1), models[0])

    @classmethod
    def load(cls, stored: list[tuple[str, str | Path, dict[str, Any]]], settings: ServingSettings) -> ServingCore:
        """Open every stored model, (tag, folder, metadata), warmed up for the largest batch; logs what
        is served and on which provider, and an error when a required GPU is not in use."""
        # several workers share the cores: each ONNX Runtime gets its share instead of all of them
        threads = 0 if settings.workers == 1 else max(1, (os.cpu_count() or 1) // settings.workers)
        core = cls([ServedModel.load(tag, path, metadata, threads) for tag, path, metadata in stored], settings)
        for model in core.models:
            model.runtime.warm_up(settings.max_batch_size)
            log.info("serving model %s (%dx%d input, %d object(s) per input)", model.tag, model.image_size,
                     model.image_size, model.objects)
        if not core.gpu_ok():
            log.error("CAPSNET_REQUIRE_GPU is set but ONNX Runtime runs on %s: readiness will fail (%s)",
                      [m.runtime.provider for m in core.models], core.models[0].runtime.cuda_unavailable)
        return core

    @property
    def model(self) -> ServedModel:
        """The default model."""
        return self.default

    def model_named(self, name: str | None) -> ServedModel:
        """The served model called `name` (a model name, or name:version); None: the default one."""
        if not name:
            return self.default
        for model in self.models:
            if name in (model.name, model.tag):
                return model
        raise UnknownModelError(f"no model {name!r} is served here; served: {', '.join(self.served_names())}")

    def served_names(self) -> list[str]:
        return [m.name for m in self.models]

    def validate(self, images: Any, model: ServedModel | None = None) -> np.ndarray:
        """Client arrays -> float32 [N, 1, S, S] for `model` (default model: None); InputError names what is wrong."""
        return validate_images(images, self.settings.max_batch_size, (model or self.default).image_size)

    def decode_uploads(self, files: list[bytes], model: ServedModel | None = None) -> np.ndarray:
        """Encoded PNG/JPEG files -> float32 [N, 1, S, S] fitted to `model`'s input; InputError names the bad file."""
        size = (model or self.default).image_size
        if not files:
            raise InputError("no image uploaded: send one or more files in the form field 'images'")
        if len(files) > self.settings.max_batch_size:
            raise InputError(f"{len(files)} images in one request; the limit is {self.settings.max_batch_size}")
        decoded = []
        for index, data in enumerate(files):
            try:
                decoded.append(preprocess_encoded(data, size))
            except InputError as e:
                raise InputError(f"image {index}: {e}") from None
        return np.stack(decoded)

    def infer_packed(self, images: np.ndarray, model: ServedModel | None = None) -> np.ndarray:
        """What a batchable API runs: validated [N, 1, S, S] -> one row of outputs per image."""
        return (model or self.default).runtime.infer_packed(images)

    def unpack(self, packed: Any, model: ServedModel | None = None) -> dict[str, np.ndarray]:
        """Batched output rows -> {output name: [N, ...]}, all finite."""
        outputs = (model or self.default).runtime.unpack(np.asarray(packed, np.float32))
        require_finite(*outputs.values())
        return outputs

    def predictions(self, outputs: dict[str, np.ndarray], model: ServedModel | None = None,
                    reconstructions: bool = False) -> list[Prediction]:
        """Responses for unpacked outputs: per image, the longest capsule, all lengths and poses, and
        the `objects` longest capsules (with their reconstructions if asked and exported)."""
        model = model or self.default
        if reconstructions and "reconstructions_top2" not in outputs:
            raise CapabilityError(f"model {model.name} was exported without reconstructions "
                                  "(capsnet export --with-top2-reconstructions)")
        names, probabilities, poses = model.class_names, outputs["probabilities"], outputs["poses"]
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :model.objects]  # [N, objects], longest first
        answers = []
        for i, (p, v) in enumerate(zip(probabilities, poses, strict=True)):
            found = [FoundObject(label=int(k), class_name=names[k], length=float(p[k]), pose=v[k].tolist(),
                                 reconstruction=outputs["reconstructions_top2"][i, j].tolist()
                                 if reconstructions else None) for j, k in enumerate(order[i])]
            answers.append(Prediction(label=int(order[i, 0]), class_name=names[order[i, 0]],
                                      probabilities=p.tolist(), poses=v.tolist(), objects=found))
        return answers

    def gpu_ok(self) -> bool:
        return not self.settings.require_gpu or all(m.runtime.provider == CUDA for m in self.models)

    def metadata(self, batcher_in_process: bool, server_versions: dict[str, str] | None = None) -> dict[str, Any]:
        """The `metadata` API's answer: the default model's details at the top, every model under `models`;
        `server_versions` join the library versions (the serving framework's, which this module does not import)."""
        model, s = self.default, self.settings
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
            "models": [m.describe() for m in self.models],
            "default_model": model.name,
            "provider": model.runtime.provider,
            "providers": model.runtime.session.get_providers(),
            "cuda_unavailable": model.runtime.cuda_unavailable,  # why not CUDA, in words; None on CUDA
            "require_gpu": s.require_gpu,
            # the statistics are this worker's; /metrics has BentoML's adaptive_batch_size for all
            "batching": {"max_batch_size": s.max_batch_size, "max_latency_ms": s.max_latency_ms,
                         "workers": s.workers,
                         "in_process": batcher_in_process,  # false: the slower to_async fallback
                         **model.runtime.stats()},
            "grpc_port": s.grpc_port,
            "versions": {**(server_versions or {}), "onnxruntime": ort.__version__, "numpy": np.__version__,
                         "python": platform.python_version(), "exported_with": config.get("versions", {})},
        }
