"""What the service does, without BentoML: the served models, request validation, pre- and
post-processing and the response shapes. Torch-free and import-safe, so tests call it directly;
serving/service.py is the thin BentoML shell around it.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, Field

from serving.engine.admission import PAST_BUDGET, Admission
from serving.engine.batcher import DynamicBatcher, QueuedTooLong
from serving.engine.repository import ModelRepository, StoredVersion, UnknownModelError, VersionPolicy, parse_policies
from serving.engine.runtime import CUDA, CapsNetRuntime
from serving.engine.statistics import ModelStatistics
from serving.handlers.preprocess import preprocess_encoded
from serving.handlers.validation import CapabilityError, InputError, validate_images
from serving.settings import ServingSettings

__all__ = ["ModelOutputError", "Prediction", "ServedModel", "ServingCore", "UnknownModelError", "task_of"]

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
    """One registered export version being served: its store tag, its metadata, its ONNX Runtime
    session, its batcher (shared by every protocol) and its statistics."""

    tag: str  # name:version in the BentoML model store
    runtime: CapsNetRuntime
    metadata: dict[str, Any]  # the BentoML model's metadata (accuracies, parity summary, source, ...)
    batcher: DynamicBatcher
    statistics: ModelStatistics

    @classmethod
    def load(cls, tag: str, path: str | Path, metadata: dict[str, Any], settings: ServingSettings,
             intra_op_threads: int = 0, statistics_hooks: dict[str, Any] | None = None) -> ServedModel:
        """Open the export in `path`, warmed up for the largest batch (blocking)."""
        runtime = CapsNetRuntime(path, intra_op_threads=intra_op_threads)
        runtime.warm_up(settings.max_batch_size)
        name, _, version = tag.partition(":")
        statistics = ModelStatistics(name, version, **(statistics_hooks or {}))
        return cls(tag, runtime, dict(metadata),
                   DynamicBatcher(runtime.infer, settings.max_batch_size, settings.max_latency_ms, statistics,
                                  settings.max_queue_delay_ms),
                   statistics)

    async def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Validated [N, 1, S, S] -> {output name: [N, ...]}, batched with every other request to this
        version, counted in its statistics. Raises QueuedTooLong past the latency budget."""
        start = time.perf_counter_ns()
        try:
            answer = await self.batcher.submit(images)
        except BaseException:
            self.statistics.record_request(False, time.perf_counter_ns() - start)
            raise
        self.statistics.record_request(True, time.perf_counter_ns() - start, answer.queue_ns, answer.batch)
        return answer.outputs

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

    def provenance(self) -> dict[str, Any]:
        """Which model this is: version, how it was trained, its recorded accuracies, the file it came from."""
        m = self.metadata
        return {"version": self.version, "training": m.get("training"), "source": m.get("source"),
                "validation_accuracy": m.get("val_accuracy"), "test_accuracy": m.get("test_accuracy")}

    def summary(self) -> str:
        """One line for the log: tag, training, accuracies, source, input and task."""
        p, training = self.provenance(), self.metadata.get("training") or {}
        trained = ", ".join(f"{training[key]} {word}" if key != "seed" else f"seed {training[key]}"
                            for key, word in (("variant", "network"), ("epochs", "epochs"), ("seed", ""))
                            if training.get(key) is not None)
        accuracy = ", ".join(f"{k} {100 * p[f'{k}_accuracy']:.2f} %" for k in ("validation", "test")
                             if p.get(f"{k}_accuracy") is not None)
        return (f"{self.tag} ({trained or 'training not recorded'}; {accuracy or 'no accuracy recorded'}; "
                f"from {p['source'] or 'an older export (source not recorded)'}; "
                f"{self.image_size}x{self.image_size} input, {self.objects} object(s) per input, "
                f"on {self.runtime.provider})")

    def describe(self) -> dict[str, Any]:
        """What a client needs to call this model, and which version it is."""
        return {"model_tag": self.tag, "name": self.name, **self.provenance(),
                "input_size": [1, self.image_size, self.image_size],
                "task": task_of(self.runtime.config),
                "class_names": self.class_names, "outputs": self.output_dims,
                "reconstructions": "reconstructions_top2" in self.output_dims,
                "pose_dims": self.runtime.pose_dim,
                # explain/reconstruct/perturb work (capsnet export's default); equivariance works always
                "explorer": self.runtime.decoder is not None
                and {"reconstruction", "routing", "primary_lengths"} <= set(self.runtime.graph_outputs)}


class ServingCore:
    """The served models (a ModelRepository: names, versions, load and unload) and every step of a
    request that is not transport: choose the model, validate, decode uploads, run it through its
    batcher, shape responses. The default model (what a request that names none gets) is the first
    single-object one served at start-up, else the first; its preferred version answers."""

    def __init__(self, repository: ModelRepository, settings: ServingSettings,
                 admission: Admission | None = None, default_name: str | None = None) -> None:
        models = repository.models()
        if not models:
            raise ValueError("ServingCore needs at least one model")
        self.repository, self.settings = repository, settings
        self.admission = admission or Admission(settings.max_queue, settings.retry_after_s)
        self.default_name = default_name or next((m.name for m in models if m.objects == 1), models[0].name)

    @classmethod
    def of(cls, models: list[ServedModel], settings: ServingSettings,
           admission: Admission | None = None) -> ServingCore:
        """A fixed set of opened models with no store behind them (tests, tools): no load or unload."""
        repository = ModelRepository(list_store=list, open_version=lambda v: None)
        for model in models:
            repository.served.setdefault(model.name, []).append(model)
        return cls(repository, settings, admission)

    @classmethod
    def start(cls, list_store: Callable[[], list[StoredVersion]], path_and_metadata: Callable[[str], tuple[Any, Any]],
              wanted: dict[str, VersionPolicy], settings: ServingSettings, admission: Admission,
              statistics_hooks: dict[str, Any] | None = None,
              served: dict[str, list[ServedModel]] | None = None) -> ServingCore:
        """Open what `wanted` selects from the store (name -> its version policy), warmed up for the
        largest batch; each version opened now or loaded later logs what it is and where it came from,
        and an error when a required GPU is not in use. `served`: the dict the repository keeps its
        served versions in (see ModelRepository)."""
        # several workers share the cores: each ONNX Runtime gets its share instead of all of them
        threads = 0 if settings.workers == 1 else max(1, (os.cpu_count() or 1) // settings.workers)

        def open_version(stored: StoredVersion) -> ServedModel:
            model = ServedModel.load(stored.tag, *path_and_metadata(stored.tag), settings, threads, statistics_hooks)
            log.info("serving %s", model.summary())
            if settings.require_gpu and model.runtime.provider != CUDA:
                log.error("CAPSNET_REQUIRE_GPU is set but ONNX Runtime runs %s on %s: readiness will fail (%s)",
                          model.tag, model.runtime.provider, model.runtime.cuda_unavailable)
            return model

        repository = ModelRepository(list_store, open_version, parse_policies(settings.version_policy),
                                     control=settings.model_control == "explicit", served=served)
        repository.start(wanted)
        return cls(repository, settings, admission)

    @property
    def models(self) -> list[ServedModel]:
        """Every served version."""
        return self.repository.models()

    @property
    def default(self) -> ServedModel:
        """The default model's preferred version (UnknownModelError if it was unloaded)."""
        return self.repository.find(self.default_name)

    @property
    def model(self) -> ServedModel:
        """The default model."""
        return self.default

    def model_named(self, name: str | None) -> ServedModel:
        """The served model called `name` (a model name: its preferred version; or name:version);
        None or '': the default one."""
        if not name:
            return self.default
        base, _, version = name.partition(":")
        return self.repository.find(base, version)

    async def predict(self, images: np.ndarray, model: ServedModel | None = None) -> dict[str, np.ndarray]:
        """Validated [N, 1, S, S] for `model` (default: the default model) -> its outputs {name: [N, ...]},
        all finite, through its batcher. Overloaded (counted) when the request waited past the latency budget."""
        model = model or self.default
        try:
            outputs = await model.infer(images)
        except QueuedTooLong:
            raise self.admission.refuse(model.name, PAST_BUDGET) from None
        require_finite(*outputs.values())
        return outputs

    def served_names(self) -> list[str]:
        return self.repository.names()

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

    def metadata(self, server_versions: dict[str, str] | None = None) -> dict[str, Any]:
        """The `metadata` API's answer: the default model's details at the top (another model's while the
        default is unloaded), every served version under `models`; `server_versions` join the library
        versions (the serving framework's, which this module does not import)."""
        s, models = self.settings, self.models
        if not models:
            return {"models": [], "default_model": self.default_name, "model_control": s.model_control,
                    "repository": self.repository.index()}
        model = next((m for m in models if m.name == self.default_name), models[0])
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
            "models": [m.describe() for m in models],
            "default_model": self.default_name,
            "version_policy": s.version_policy,
            "model_control": s.model_control,
            "provider": model.runtime.provider,
            "providers": model.runtime.session.get_providers(),
            "cuda_unavailable": model.runtime.cuda_unavailable,  # why not CUDA, in words; None on CUDA
            "require_gpu": s.require_gpu,
            # the statistics are this worker's; per version: /v2/models/stats, and nv_inference_* on /metrics
            "batching": {"max_batch_size": s.max_batch_size, "max_latency_ms": s.max_latency_ms,
                         "max_queue_delay_ms": s.max_queue_delay_ms,
                         "workers": s.workers, **model.statistics.batching()},
            "grpc_port": s.grpc_port,
            "versions": {**(server_versions or {}), "onnxruntime": ort.__version__, "numpy": np.__version__,
                         "python": platform.python_version(), "exported_with": config.get("versions", {})},
        }
