"""The Open Inference Protocol v2 (KServe / Triton) pieces both transports share: what a served model
looks like to the protocol, and the one input tensor turned into validated images. serving/oip/grpc_service.py
speaks it over gRPC, serving/oip/rest.py over REST; both hand images to the same batcher."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serving.handlers.validation import InputError, validate_images
from serving.oip.triton_config import CLASSIFIED_OUTPUT, PLATFORM, Tensor, model_config

Infer = Callable[[np.ndarray], Awaitable[dict[str, np.ndarray]]]
# datatype -> (numpy dtype of its raw little-endian bytes, scale to [0, 1]): UINT8 images are MNIST's bytes
IMAGE_DATATYPES = {"FP32": (np.dtype("<f4"), 1.0), "UINT8": (np.dtype("u1"), 1 / 255)}
# What both transports answer to server metadata (a Bento carries serving/ without the installed
# package, so the version is written here, as in pyproject.toml).
SERVER_NAME, SERVER_VERSION = "capsnet-pipeline", "0.1.0"
# What server metadata lists, on both transports: exactly the extensions implemented. The model
# repository's index always answers; load and unload need CAPSNET_MODEL_CONTROL=explicit.
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics"]


@dataclass(frozen=True)
class OipModel:
    """What the protocol servers need of one served model."""

    version: str
    infer: Infer  # validated images [N, 1, S, S] -> {output name: [N, ...]}
    image_size: int
    output_dims: dict[str, list[int]]  # per output, the shape after the batch axis
    on_gpu: bool = False  # ONNX Runtime runs it on CUDA (the ModelConfig's instance kind)
    class_names: tuple[str, ...] = ()  # what the classification extension's strings name
    versions: tuple[str, ...] = ()  # every version of the model in service (default: this one)

    def inputs(self) -> list[Tensor]:
        return [Tensor("image", "FP32", (1, self.image_size, self.image_size))]

    def outputs(self) -> list[Tensor]:
        return [Tensor(name, "FP32", tuple(dims)) for name, dims in self.output_dims.items()]

    def metadata(self, name: str) -> dict[str, Any]:
        """The protocol's model metadata (JSON form; the gRPC reply is parsed from it): tensor shapes
        lead with -1, the batch axis of any size."""
        def tensors(ts: list[Tensor]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": [-1, *t.dims]} for t in ts]
        return {"name": name, "versions": list(self.versions or (self.version,)), "platform": PLATFORM,
                "inputs": tensors(self.inputs()), "outputs": tensors(self.outputs())}

    def config(self, name: str, max_batch_size: int) -> Any:
        """Triton's ModelConfig message of this model as served."""
        return model_config(name, self.inputs(), self.outputs(), max_batch_size=max_batch_size,
                            instance_kind="gpu" if self.on_gpu else "cpu")

    def wanted_outputs(self, names: list[str]) -> list[str]:
        """The outputs a request asks for (none named: all); InputError for one the model lacks."""
        unknown = sorted(set(names) - set(self.output_dims))
        if unknown:
            raise InputError(f"unknown outputs {unknown}; this model has {list(self.output_dims)}")
        return names or list(self.output_dims)

    @staticmethod
    def check_classification(class_counts: dict[str, int]) -> None:
        """InputError unless every classification request (output -> top k) is on CLASSIFIED_OUTPUT
        ('probabilities'), k >= 1; the front ends call it before the model runs."""
        for name, count in class_counts.items():
            if name != CLASSIFIED_OUTPUT or count < 1:
                raise InputError(f"classification (class_count {count}) applies to output {CLASSIFIED_OUTPUT!r} "
                                 f"with a count >= 1, not {name!r}")

    def answer(self, outputs: dict[str, np.ndarray], wanted: list[str], class_counts: dict[str, int]
               ) -> dict[str, np.ndarray]:
        """The tensors to return: each wanted output as FP32, or, where the request asked for the
        classification extension (`class_counts`: output -> top k, checked), as BYTES strings
        "value:index:label"."""
        return {name: top_classes(outputs[name], class_counts[name], self.class_names) if name in class_counts
                else outputs[name] for name in wanted}


class ModelSource(Protocol):
    """What the protocol servers ask of the served models (serving/oip/listeners.py: the repository's view)."""

    def find(self, name: str, version: str) -> OipModel:
        """The served model (version ''): its preferred version); UnknownModelError otherwise."""

    def statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        """Triton's ModelStatistics (JSON) of every served version of `name` ('': of every model)."""

    def index(self, ready_only: bool) -> list[dict[str, str]]:
        """The repository index: name, version, state, reason."""

    async def load(self, name: str, config: str | None) -> None:
        """Load `name` (config: a JSON model config that may carry a version_policy)."""

    async def unload(self, name: str) -> None: ...


def top_classes(scores: np.ndarray, count: int, class_names: Sequence[str]) -> np.ndarray:
    """The classification extension: scores [N, K] -> [N, min(count, K)] bytes b"value:index:label",
    the highest first (Triton's format, the value with six decimals)."""
    k = min(count, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.array([[f"{scores[i, j]:f}:{j}:{class_names[j] if j < len(class_names) else j}".encode()
                      for j in row] for i, row in enumerate(order)], dtype=object).reshape(len(scores), k)


def datatype_of(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == object else "FP32"


def raw_bytes(array: np.ndarray) -> bytes:
    """A tensor's raw contents as both transports send them: FP32 little-endian, or for BYTES each
    element as a 4-byte little-endian length and its bytes."""
    if array.dtype != object:
        return np.ascontiguousarray(array, dtype="<f4").tobytes()
    return b"".join(len(item).to_bytes(4, "little") + item for item in array.reshape(-1))


def image_tensor(name: str, datatype: str, shape: list[int], values: bytes | np.ndarray, max_images: int,
                 image_size: int) -> np.ndarray:
    """The request's input tensor as validated float32 images [N, 1, S, S]: `values` are its raw bytes
    (binary data) or its numbers. InputError names what is wrong."""
    if name != "image":
        raise InputError(f"expected one input named 'image', got {name!r}")
    if datatype not in IMAGE_DATATYPES:
        raise InputError(f"input 'image' must be FP32 (or UINT8 pixels 0-255), got {datatype}")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise InputError(f"shape {shape} must be non-negative integers")
    dtype, scale = IMAGE_DATATYPES[datatype]
    count = int(np.prod(shape)) if shape else 0
    if isinstance(values, bytes | bytearray | memoryview):
        if len(values) != dtype.itemsize * count:
            raise InputError(f"input 'image' holds {len(values)} bytes; shape {shape} {datatype} needs "
                             f"{dtype.itemsize * count}")
        flat = np.frombuffer(values, dtype=dtype)
    else:
        try:
            flat = np.asarray(values).reshape(-1)
        except ValueError as e:  # ragged nesting
            raise InputError(f"input 'image' data must be a rectangular array of numbers: {e}") from None
        if flat.size != count:
            raise InputError(f"input 'image' holds {flat.size} values; shape {shape} needs {count}")
    images = flat.reshape(shape).astype(np.float32) * np.float32(scale) if scale != 1.0 else flat.reshape(shape)
    return validate_images(images, max_images, image_size)
