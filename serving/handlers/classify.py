"""What a classification request means, whatever carried it: find the model version it names,
validate or decode its images, run them through the version's batcher within the latency budget,
refuse non-finite outputs, and shape the answer. Torch- and BentoML-free, so tests call it directly;
the BentoML APIs (serving/service.py) call one method per request, and the Open Inference Protocol's
data plane (serving/oip/dataplane.py) calls `predict`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, Field

from serving.engine.admission import Admission
from serving.engine.batcher import QueuedTooLong
from serving.engine.facts import POSES, PROBABILITIES, RECONSTRUCTIONS_TOP2
from serving.engine.policies import StoredVersion
from serving.engine.repository import ModelRepository
from serving.engine.version import ModelVersion
from serving.errors import PAST_BUDGET, CapabilityError, InputError, ModelOutputError
from serving.handlers.preprocess import preprocess_encoded
from serving.handlers.validation import validate_images
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


def require_finite(*arrays: np.ndarray) -> None:
    """Model outputs must be finite before anyone sees them (the HTTP, gRPC and explorer answers)."""
    if not all(np.isfinite(a).all() for a in arrays):
        raise ModelOutputError("the model produced non-finite values; refusing to return them")


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


@dataclass(frozen=True)
class Answered(Generic[T]):
    """A request's answer and the model version that gave it (name:version)."""

    tag: str
    value: T


def version_opener(path_and_metadata: Callable[[str], tuple[Any, dict[str, Any]]], settings: ServingSettings,
                   statistics_hooks: dict[str, Any] | None = None) -> Callable[[StoredVersion], ModelVersion]:
    """How the repository opens a stored version (at start-up and on load): warmed up for the largest
    batch, logging what it is and where it came from, and an error when a required GPU is not in use.
    `path_and_metadata(tag)`: where the store keeps the export, and its record."""
    # several workers share the cores: each ONNX Runtime gets its share instead of all of them
    threads = 0 if settings.workers == 1 else max(1, (os.cpu_count() or 1) // settings.workers)

    def open_version(stored: StoredVersion) -> ModelVersion:
        model = ModelVersion.load(stored.tag, *path_and_metadata(stored.tag), settings.batching, threads,
                                  statistics_hooks)
        log.info("serving %s", model.summary())
        if settings.require_gpu and not model.on_gpu:
            log.error("CAPSNET_REQUIRE_GPU is set but ONNX Runtime runs %s on %s: readiness will fail (%s)",
                      model.tag, model.runtime.provider, model.runtime.cuda_unavailable)
        return model

    return open_version


class Classifier:
    """The served models (a ModelRepository: names, versions, the default model, load and unload)
    and every step of a request that is not transport."""

    def __init__(self, repository: ModelRepository, settings: ServingSettings,
                 admission: Admission | None = None) -> None:
        if not repository.models():
            raise ValueError("Classifier needs at least one model")
        self.repository, self.settings = repository, settings
        self.admission = admission or Admission(settings.max_queue, settings.retry_after_s)

    @classmethod
    def of(cls, models: Iterable[Any], settings: ServingSettings, admission: Admission | None = None) -> Classifier:
        """A fixed set of opened versions with no store behind them (tests, tools): no load or unload."""
        return cls(ModelRepository.of(models), settings, admission)

    @property
    def models(self) -> list[ModelVersion]:
        """Every served version."""
        return self.repository.models()

    @property
    def default_name(self) -> str:
        return self.repository.default_name

    @property
    def model(self) -> ModelVersion:
        """The default model's preferred version (UnknownModelError if it was unloaded)."""
        return self.repository.find_tag(None)

    def model_named(self, tag: str | None) -> ModelVersion:
        """The served version a request names: NAME, NAME:VERSION, or None / '' for the default."""
        return self.repository.find_tag(tag)

    async def predict(self, images: np.ndarray, model: ModelVersion | None = None) -> dict[str, np.ndarray]:
        """Validated [N, 1, S, S] for `model` (None: the default) -> its outputs {name: [N, ...]}, all
        finite, through its batcher. Overloaded (counted) when the request waited past the latency budget."""
        model = model or self.model
        try:
            outputs = await model.infer(images)
        except QueuedTooLong:
            raise self.admission.refuse(model.name, PAST_BUDGET) from None
        require_finite(*outputs.values())
        return outputs

    def validate(self, images: Any, model: ModelVersion | None = None) -> np.ndarray:
        """Client arrays -> float32 [N, 1, S, S] for `model` (None: the default); InputError names what is wrong."""
        return validate_images(images, self.settings.max_batch_size, (model or self.model).facts.image_size)

    def decode_uploads(self, files: list[bytes], model: ModelVersion | None = None) -> np.ndarray:
        """Encoded PNG/JPEG files -> float32 [N, 1, S, S] fitted to `model`'s input (None: the default
        model's); InputError names the bad file."""
        model = model or self.model
        if not files:
            raise InputError("no image uploaded: send one or more files in the form field 'images'")
        if len(files) > self.settings.max_batch_size:
            raise InputError(f"{len(files)} images in one request; the limit is {self.settings.max_batch_size}")
        decoded = []
        for index, data in enumerate(files):
            try:
                decoded.append(preprocess_encoded(data, model.facts.image_size))
            except InputError as e:
                raise InputError(f"image {index}: {e}") from None
        return np.stack(decoded)

    def predictions(self, outputs: dict[str, np.ndarray], model: ModelVersion | None = None,
                    reconstructions: bool = False) -> list[Prediction]:
        """Responses for a version's outputs (None: the default model's): per image, the longest capsule,
        all lengths and poses, and the `objects` longest capsules (with their reconstructions if asked
        and exported)."""
        model = model or self.model
        if reconstructions and RECONSTRUCTIONS_TOP2 not in outputs:
            raise CapabilityError(f"model {model.name} was exported without reconstructions "
                                  "(capsnet export --with-top2-reconstructions)")
        names, probabilities, poses = model.facts.class_names, outputs[PROBABILITIES], outputs[POSES]
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :model.objects]  # [N, objects], longest first
        answers = []
        for i, (p, v) in enumerate(zip(probabilities, poses, strict=True)):
            found = [FoundObject(label=int(k), class_name=names[k], length=float(p[k]), pose=v[k].tolist(),
                                 reconstruction=outputs[RECONSTRUCTIONS_TOP2][i, j].tolist()
                                 if reconstructions else None) for j, k in enumerate(order[i])]
            answers.append(Prediction(label=int(order[i, 0]), class_name=names[order[i, 0]],
                                      probabilities=p.tolist(), poses=v.tolist(), objects=found))
        return answers

    async def classify(self, images: Any, tag: str | None, reconstructions: bool = False
                       ) -> Answered[list[Prediction]]:
        """A classify request: client arrays for the version `tag` names -> its predictions."""
        model = self.model_named(tag)
        batch = self.validate(images, model)
        return Answered(model.tag, self.predictions(await self.predict(batch, model), model, reconstructions))

    async def classify_uploads(self, files: list[bytes], tag: str | None, reconstructions: bool = False
                               ) -> Answered[list[Prediction]]:
        """A classify_image request: encoded files for the version `tag` names -> its predictions."""
        model = self.model_named(tag)
        batch = self.decode_uploads(files, model)
        return Answered(model.tag, self.predictions(await self.predict(batch, model), model, reconstructions))

    async def infer_packed(self, images: np.ndarray, tag: str | None) -> Answered[np.ndarray]:
        """A low-level infer request: validated [N, 1, S, S] -> [N, W], the outputs packed per image."""
        model = self.model_named(tag)
        return Answered(model.tag, model.runtime.pack(await self.predict(images, model)))

    def gpu_ok(self) -> bool:
        return not self.settings.require_gpu or all(m.on_gpu for m in self.models)

    def ready(self) -> bool:
        """Strict readiness, as Triton's: a model serves (a server whose last model was unloaded
        answers every inference 404, so it must not take traffic) and, if CAPSNET_REQUIRE_GPU, every
        served version runs on the GPU. Every model the server should serve is in the repository:
        start-up opens them all or exits, a failed load keeps what served, and an operator's unload
        takes a model out of what should serve."""
        return bool(self.models) and self.gpu_ok()
