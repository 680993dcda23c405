"""Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`, as KServe and Triton
speak it), so existing Triton/KServe clients work unchanged.

The message classes come from tritonclient's generated code of the same .proto. This file only
translates messages to and from the data plane (serving/oip/dataplane.py), which does the work for
both transports, and errors to gRPC codes through serving/errors.py. A full model answers UNAVAILABLE
with `retry-after` (seconds) and gRPC's `grpc-retry-pushback-ms` in the trailing metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from serving.errors import InputError, answer_for
from serving.handlers.control import CONTROL_KEY_HEADER
from serving.oip.dataplane import INPUT_NAME, DataPlane, InferRequest, TensorData
from serving.oip.tensors import datatype_of, raw_bytes

log = logging.getLogger(__name__)

T = TypeVar("T")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Implements ServerLive/Ready, ModelReady, Server/ModelMetadata, ModelConfig, ModelInfer (with the
    classification extension), ModelStatistics and the repository's RepositoryIndex / ModelLoad /
    ModelUnload for the served models (by the protocol's model name and version); the other methods of
    the service (shared memory, trace and log settings) answer UNIMPLEMENTED (the generated base class
    does that)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def _answer(self, method: str, context: Any, call: Callable[[], Awaitable[T] | T]) -> T:
        """Run `call`; an error aborts with the status serving/errors.py gives it, logged as it says.
        (context.abort raises, so it is called outside the block that catches.)"""
        try:
            result = call()
            return await result if isinstance(result, Awaitable) else result  # type: ignore[return-value]
        except Exception as e:
            answer = answer_for(e)
            if answer.kind == "client":
                log.warning("gRPC %s: %s", method, answer.message)
            elif answer.kind == "overloaded":  # counted and summarised by the admission; no line per request
                context.set_trailing_metadata((("retry-after", str(answer.retry_after_s)),
                                               ("grpc-retry-pushback-ms", str(1000 * answer.retry_after_s))))
            else:
                log.exception("gRPC %s failed", method)
        await context.abort(getattr(grpc.StatusCode, answer.status.grpc), answer.message)
        raise AssertionError("unreachable: abort raises")

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict(self.plane.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        document = await self._answer("ModelMetadata", context,
                                      lambda: self.plane.model_metadata(request.name, request.version))
        return json_format.ParseDict(document, pb.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        config = await self._answer("ModelConfig", context,
                                    lambda: self.plane.model_config(request.name, request.version))
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        stats = await self._answer("ModelStatistics", context,
                                   lambda: self.plane.statistics(request.name, request.version))
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict({"models": self.plane.index(request.ready)}, pb.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        config = request.parameters["config"].string_param if "config" in request.parameters else None
        await self._answer("RepositoryModelLoad", context,
                           lambda: self.plane.load(request.model_name, config, control_key(context)))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._answer("RepositoryModelUnload", context,
                           lambda: self.plane.unload(request.model_name, control_key(context)))
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def infer() -> Any:
            with self.plane.admit(request.model_name, request.model_version):
                return await self.plane.infer(decode_infer(request))

        answer = await self._answer("ModelInfer", context, infer)
        response = pb.ModelInferResponse(model_name=answer.model_name, model_version=answer.model_version,
                                         id=request.id)
        for name, array in answer.outputs.items():
            response.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
            response.raw_output_contents.append(raw_bytes(array))
        return response


def control_key(context: Any) -> str | None:
    """The operator's key a call carries in its metadata (serving/handlers/control.py)."""
    return dict(context.invocation_metadata() or ()).get(CONTROL_KEY_HEADER)


def decode_infer(request: Any) -> InferRequest:
    """A ModelInferRequest as the data plane's request; InputError for one that is malformed."""
    if len(request.inputs) != 1:
        raise InputError(f"expected exactly one input named {INPUT_NAME!r}, got {[i.name for i in request.inputs]}")
    tensor = request.inputs[0]
    if len(request.raw_input_contents) > 1:  # one raw content per input, or none (typed contents)
        raise InputError(f"{len(request.raw_input_contents)} raw_input_contents for 1 input; send one "
                         "(or none, with the values in the input's contents)")
    values = request.raw_input_contents[0] if request.raw_input_contents else \
        (tensor.contents.fp32_contents if tensor.datatype == "FP32" else tensor.contents.uint_contents)
    class_counts = {o.name: o.parameters["classification"].int64_param for o in request.outputs
                    if "classification" in o.parameters}
    return InferRequest(request.model_name, request.model_version,
                        TensorData(tensor.name, tensor.datatype, list(tensor.shape), values),
                        [o.name for o in request.outputs], class_counts, request.id)
