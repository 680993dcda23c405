"""The Open Inference Protocol v2 (KServe / Triton) data plane: every operation of the protocol, written
once, over transport-neutral requests and answers. serving/oip/rest.py (REST) and
serving/oip/grpc_service.py (gRPC) only translate their wire formats to and from these; both reach the
same classifier, so a request on either protocol shares batches, statistics and admission with the
BentoML APIs, and a model loaded or unloaded is seen by every protocol at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.engine.facts import ModelFacts
from serving.engine.policies import VersionPolicy
from serving.errors import InputError, UnknownModelError
from serving.handlers.classify import Classifier
from serving.handlers.control import check_control_key
from serving.oip.tensors import image_tensor, top_classes
from serving.oip.triton_config import CLASSIFIED_OUTPUT, PLATFORM, Tensor, model_config

# What both transports answer to server metadata (a Bento carries serving/ without the installed
# package, so the version is written here, as in pyproject.toml).
SERVER_NAME, SERVER_VERSION = "capsnet-pipeline", "0.1.0"
# What server metadata lists, on both transports: exactly the extensions implemented. The model
# repository's index always answers; load and unload need CAPSNET_MODEL_CONTROL=explicit.
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics"]
INPUT_NAME = "image"


@dataclass(frozen=True)
class TensorData:
    """The request's one input tensor as it arrived: its raw bytes (binary data) or its numbers."""

    name: Any
    datatype: Any
    shape: list[int]
    values: Any


@dataclass(frozen=True)
class InferRequest:
    """One inference request, from either transport: the input, the outputs asked for by name (none:
    all), and those asked as the classification extension's top k (output -> k)."""

    model_name: str
    model_version: str
    image: TensorData
    outputs: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    id: Any = None


@dataclass(frozen=True)
class InferResponse:
    """The answer: each wanted output as FP32 [N, ...] or, for classification, BYTES strings."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: Any = None


def inputs_of(facts: ModelFacts) -> list[Tensor]:
    return [Tensor(INPUT_NAME, "FP32", (1, facts.image_size, facts.image_size))]


def outputs_of(facts: ModelFacts) -> list[Tensor]:
    return [Tensor(name, "FP32", tuple(dims)) for name, dims in facts.output_dims.items()]


def check_classification(class_counts: dict[str, int]) -> None:
    """InputError unless every classification request (output -> top k) is on CLASSIFIED_OUTPUT
    ('probabilities'), k >= 1; checked before the model runs."""
    for name, count in class_counts.items():
        if name != CLASSIFIED_OUTPUT or count < 1:
            raise InputError(f"classification (class_count {count}) applies to output {CLASSIFIED_OUTPUT!r} "
                             f"with a count >= 1, not {name!r}")


class DataPlane:
    """The protocol's operations over `classifier`'s served models. `is_ready`: whether the server is
    ready (the service's readiness, shared with BentoML's /readyz)."""

    def __init__(self, classifier: Classifier, is_ready: Callable[[], bool]) -> None:
        self.classifier, self.is_ready = classifier, is_ready
        self.repository = classifier.repository
        self.max_images = classifier.settings.max_batch_size

    # health and metadata

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def ready(self) -> bool:
        return self.is_ready()

    def model_ready(self, name: str, version: str) -> bool:
        """A model that is not served (unknown, or unloaded) is not ready, as Triton answers."""
        try:
            self.repository.find(name, version)
        except UnknownModelError:
            return False
        return self.is_ready()

    def model_metadata(self, name: str, version: str) -> dict[str, Any]:
        """The protocol's model metadata (JSON form; the gRPC reply is parsed from it): tensor shapes
        lead with -1, the batch axis of any size."""
        model = self.repository.find(name, version)

        def tensors(ts: list[Tensor]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": [-1, *t.dims]} for t in ts]

        return {"name": name, "versions": [m.version for m in self.repository.served.get(name, [model])],
                "platform": PLATFORM, "inputs": tensors(inputs_of(model.facts)),
                "outputs": tensors(outputs_of(model.facts))}

    def model_config(self, name: str, version: str) -> Any:
        """Triton's ModelConfig message of this model as served: our batcher's maximum and queue delay,
        and no preferred sizes (it has none)."""
        model = self.repository.find(name, version)
        delay_us = round(1000 * self.classifier.settings.max_queue_delay_ms)
        config = model_config(name, inputs_of(model.facts), outputs_of(model.facts), max_batch_size=self.max_images,
                              instance_kind="gpu" if model.on_gpu else "cpu", preferred_batch_sizes=(),
                              max_queue_delay_us=delay_us)
        config.parameters["precision"].string_value = model.facts.precision  # fp32, or int8
        return config

    # inference

    @contextmanager
    def admit(self, name: str, version: str) -> Iterator[None]:
        """One of `name`'s admission places for the block: UnknownModelError for a model not served,
        Overloaded when no place is free. The front ends take it before they read or decode a request,
        so a refusal costs next to nothing."""
        self.repository.find(name, version)
        with self.classifier.admission.admit(name):
            yield

    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate the input and the outputs asked for, run the model through its batcher, answer.
        InputError for a bad request (the model is not called), UnknownModelError, Overloaded."""
        model = self.repository.find(request.model_name, request.model_version)
        tensor = request.image
        images = image_tensor(tensor.name, tensor.datatype, tensor.shape, tensor.values, self.max_images,
                              model.facts.image_size)
        served = list(model.facts.output_dims)
        unknown = sorted(set(request.outputs) - set(served))
        if unknown:
            raise InputError(f"unknown outputs {unknown}; this model has {served}")
        wanted = request.outputs or served
        check_classification(request.class_counts)
        outputs = await self.classifier.predict(images, model)
        counts, names = request.class_counts, model.facts.class_names
        answer = {name: top_classes(outputs[name], counts[name], names) if name in counts else outputs[name]
                  for name in wanted}
        return InferResponse(request.model_name, model.version, answer, request.id)

    # statistics and the model repository

    def statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        """Triton's ModelStatistics (JSON) of every served version of `name` ('': of every model)."""
        if not name:
            return [m.statistics.as_dict() for m in self.repository.models()]
        if version:
            return [self.repository.find(name, version).statistics.as_dict()]
        self.repository.find(name)  # UnknownModelError for a model not served
        return [m.statistics.as_dict() for m in self.repository.served[name]]

    def index(self, ready_only: bool) -> list[dict[str, str]]:
        """The repository index: name, version, state, reason."""
        return self.repository.index(ready_only)

    async def load(self, name: str, config: str | None, key: str | None) -> None:
        """Load `name` (config: a JSON model config that may carry a version_policy), for a request that
        carries the operator's control `key`."""
        self._authorize(key)
        await self.repository.load(name, VersionPolicy.from_load_request(config))

    async def unload(self, name: str, key: str | None) -> None:
        self._authorize(key)
        await self.repository.unload(name)

    def _authorize(self, key: str | None) -> None:
        """With model control on, only the operator's key changes what is served (serving/handlers/
        control.py); with it off the repository refuses every change anyway (ModelControlDisabled)."""
        if self.repository.control:
            check_control_key(self.classifier.settings.control_key, key)
