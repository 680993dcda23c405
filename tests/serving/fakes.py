"""What the in-process serving tests share: a model call that waits until released, a stand-in for
gRPC's servicer context, request builders, and a data plane over fake versions behind the real
repository's lookup (so the error messages are the server's own)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from serving.engine.admission import Admission
from serving.engine.facts import ModelFacts
from serving.engine.statistics import ModelStatistics
from serving.handlers.classify import Classifier
from serving.oip.dataplane import DataPlane
from serving.settings import ServingSettings

OUTPUTS = {"probabilities": [10], "poses": [10, 16]}
_ROW = "[" + ",".join(["NaN"] + ["0"] * 27) + "]"
# a /classify body with one 28x28 image holding a NaN (JSON has no NaN; Python's parser accepts it)
NAN_IMAGE = ('{"images": [[' + ",".join([_ROW] * 28) + "]]}").encode()
FACTS = ModelFacts({"model_config": {"image_size": 28, "digit_dim": 16}, "class_names": [str(k) for k in range(10)],
                    "outputs": list(OUTPUTS)})


@dataclass
class FakeVersion:
    """A served version whose inference is `infer` (images -> outputs): what the data plane and the
    classifier use of a ModelVersion, without ONNX Runtime."""

    name: str
    version: str
    infer: Any
    facts: ModelFacts = FACTS
    on_gpu: bool = False

    def __post_init__(self) -> None:
        self.statistics = ModelStatistics(self.name, self.version)

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def objects(self) -> int:
        return self.facts.objects


CONTROL_KEY = "fake-operator-key"  # the control key of a fake data plane with model control on


def dataplane(model: Any, name: str = "m", admission: Admission | None = None, control: bool = False,
              max_images: int = 8, is_ready: Any = lambda: True) -> DataPlane:
    """The data plane over one model `name`, version "1", 28x28 input, whose inference is `model`
    (None: no model served), looked up by the real repository (so the errors are the server's own)."""
    settings = ServingSettings(max_batch_size=max_images, control_key=CONTROL_KEY if control else "")
    classifier = Classifier.of([FakeVersion(name, "1", model)], settings, admission or Admission(4, 1))
    classifier.repository.control = control
    if model is None:
        classifier.repository.served.clear()
    return DataPlane(classifier, is_ready)


class Blocking:
    """A model call that waits until released; counts how many calls reached it."""

    def __init__(self) -> None:
        self.release, self.calls = asyncio.Event(), 0

    async def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        await self.release.wait()
        n = len(images)
        return {"probabilities": np.full((n, 10), 0.1, np.float32), "poses": np.zeros((n, 10, 16), np.float32)}


def run(scenario, timeout: float = 20.0):
    """asyncio.run with a deadline: a request that should have been refused but waits fails the test."""
    return asyncio.run(asyncio.wait_for(scenario, timeout))


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def oip_request(n: int = 1) -> dict:
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [n, 1, 28, 28], "data": [0.5] * (784 * n)}]}


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class FakeContext:
    """What InferenceServicer uses of grpc.aio.ServicerContext; each one a connection of its own."""

    connections = 0

    def __init__(self, metadata: tuple = ()) -> None:
        self.trailing: tuple = ()
        self.metadata = metadata
        FakeContext.connections += 1
        self.connection = f"ipv4:127.0.0.1:{FakeContext.connections}"

    def peer(self) -> str:
        return self.connection

    def invocation_metadata(self) -> tuple:
        return self.metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def set_trailing_metadata(self, metadata: tuple) -> None:
        self.trailing = metadata


def grpc_request(raw_contents: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    for _ in range(raw_contents):
        request.raw_input_contents.append(np.full((1, 1, 28, 28), 0.5, "<f4").tobytes())
    return request
