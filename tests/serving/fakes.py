"""What the in-process serving tests share: a model call that waits until released, a stand-in for
gRPC's servicer context, request builders, and a fixed set of OIP models behind the real repository's
lookup (so the error messages are the server's own)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from serving.engine.repository import ModelRepository
from serving.oip.listeners import ServedOipModels
from serving.oip.types import OipModel

OUTPUTS = {"probabilities": [10], "poses": [10, 16]}
_ROW = "[" + ",".join(["NaN"] + ["0"] * 27) + "]"
# a /classify body with one 28x28 image holding a NaN (JSON has no NaN; Python's parser accepts it)
NAN_IMAGE = ('{"images": [[' + ",".join([_ROW] * 28) + "]]}").encode()


class FixedModels(ServedOipModels):
    """The protocols' view of the served set (index, load, unload as served), over fixed OipModels
    (name -> model) instead of opened ServedModels, looked up by the real ModelRepository."""

    def __init__(self, models: dict[str, OipModel], control: bool = False) -> None:
        self.repository = ModelRepository(list, lambda stored: None, control=control)
        self.repository.served.update({name: [model] for name, model in models.items()})

    def find(self, name: str, version: str) -> OipModel:
        return self.repository.find(name, version)

    def statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        return []


def served(model: Any, name: str = "m") -> FixedModels:
    """One model `name`, version "1", 28x28 input, whose inference is `model`."""
    return FixedModels({name: OipModel("1", model, 28, OUTPUTS, class_names=tuple(str(k) for k in range(10)))})


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

    def __init__(self) -> None:
        self.trailing: tuple = ()
        FakeContext.connections += 1
        self.connection = f"ipv4:127.0.0.1:{FakeContext.connections}"

    def peer(self) -> str:
        return self.connection

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
