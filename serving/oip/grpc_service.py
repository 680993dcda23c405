"""Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`, as KServe and Triton
speak it), so existing Triton/KServe clients work unchanged.

The message classes come from tritonclient's generated code of the same .proto. ModelInfer hands
its validated images to the same batched model call as HTTP, once the model's admission (serving/
admission.py) has let it in; a full model answers UNAVAILABLE with `retry-after` (seconds) and gRPC's
`grpc-retry-pushback-ms` in the trailing metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from serving.engine.admission import Admission, Overloaded
from serving.engine.repository import ModelControlDisabled, UnknownModelError
from serving.handlers.validation import InputError
from serving.oip.types import (
    EXTENSIONS,
    SERVER_NAME,
    SERVER_VERSION,
    ModelSource,
    OipModel,
    datatype_of,
    image_tensor,
    raw_bytes,
)
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Implements ServerLive/Ready, ModelReady, Server/ModelMetadata, ModelConfig, ModelInfer (with the
    classification extension), ModelStatistics and the repository's RepositoryIndex / ModelLoad /
    ModelUnload for the served models (by the protocol's model name and version); the other methods of
    the service (shared memory, trace and log settings) answer UNIMPLEMENTED (the generated base class
    does that)."""

    def __init__(self, models: ModelSource, is_ready: Callable[[], bool], max_images: int,
                 admission: Admission) -> None:
        self.models = models
        self.is_ready = is_ready
        self.max_images = max_images
        self.admission = admission

    async def _model(self, name: str, version: str, context: grpc.aio.ServicerContext) -> OipModel:
        try:
            return self.models.find(name, version)
        except UnknownModelError as e:
            log.warning("gRPC: %s", e)
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
            raise  # abort raises; this keeps type checkers sure nothing is returned

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.is_ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:  # a model that is not served (unknown, or unloaded) is not ready, as Triton answers
            self.models.find(request.name, request.version)
        except UnknownModelError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.is_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        model = await self._model(request.name, request.version, context)
        return json_format.ParseDict(model.metadata(request.name), pb.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        model = await self._model(request.name, request.version, context)
        return pb.ModelConfigResponse(config=model.config(request.name, self.max_images))

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        if request.name:
            await self._model(request.name, request.version, context)
        return json_format.ParseDict({"model_stats": self.models.statistics(request.name, request.version)},
                                     pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict({"models": self.models.index(request.ready)}, pb.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        config = request.parameters["config"].string_param if "config" in request.parameters else None
        await self._control(self.models.load(request.model_name, config), context)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._control(self.models.unload(request.model_name), context)
        return pb.RepositoryModelUnloadResponse()

    async def _control(self, action: Any, context: Any) -> None:
        """Run a load or unload; a client's mistake aborts with its status and one log line."""
        problem: tuple[grpc.StatusCode, str] | None = None
        try:
            await action
        except UnknownModelError as e:
            problem = grpc.StatusCode.NOT_FOUND, str(e)
        except ModelControlDisabled as e:
            problem = grpc.StatusCode.FAILED_PRECONDITION, str(e)
        except InputError as e:
            problem = grpc.StatusCode.INVALID_ARGUMENT, str(e)
        if problem is not None:
            log.warning("gRPC repository: %s", problem[1])
            await context.abort(*problem)

    def _images(self, request: Any, image_size: int) -> np.ndarray:
        """The request's one input as validated [N, 1, S, S]; InputError otherwise."""
        if len(request.inputs) != 1:
            raise InputError(f"expected exactly one input named 'image', got {[i.name for i in request.inputs]}")
        tensor = request.inputs[0]
        if len(request.raw_input_contents) > 1:  # one raw content per input, or none (typed contents)
            raise InputError(f"{len(request.raw_input_contents)} raw_input_contents for 1 input; send one "
                             "(or none, with the values in the input's contents)")
        values = request.raw_input_contents[0] if request.raw_input_contents else \
            (tensor.contents.fp32_contents if tensor.datatype == "FP32" else tensor.contents.uint_contents)
        return image_tensor(tensor.name, tensor.datatype, list(tensor.shape), values, self.max_images, image_size)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        model = await self._model(request.model_name, request.model_version, context)
        # context.abort raises, so every abort is outside the try blocks that catch exceptions
        problem: tuple[grpc.StatusCode, str] | None = None
        try:
            with self.admission.admit(request.model_name):
                images = self._images(request, model.image_size)
                wanted = model.wanted_outputs([o.name for o in request.outputs])
                class_counts = {o.name: o.parameters["classification"].int64_param for o in request.outputs
                                if "classification" in o.parameters}
                model.check_classification(class_counts)
                answer = model.answer(await model.infer(images), wanted, class_counts)
        except InputError as e:
            problem = grpc.StatusCode.INVALID_ARGUMENT, str(e)
        except Overloaded as e:  # counted and summarised by the admission; no line per request
            context.set_trailing_metadata((("retry-after", str(e.retry_after_s)),
                                           ("grpc-retry-pushback-ms", str(1000 * e.retry_after_s))))
            problem = grpc.StatusCode.UNAVAILABLE, str(e)
        except Exception:
            log.exception("inference failed")
            problem = grpc.StatusCode.INTERNAL, "inference failed; see the server log"
        if problem is not None:
            await context.abort(*problem)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=model.version,
                                         id=request.id)
        for name, array in answer.items():
            response.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
            response.raw_output_contents.append(raw_bytes(array))
        return response


async def start_grpc_server(servicer: InferenceServicer, port: int, max_message_bytes: int,
                            shared_port: bool = False) -> grpc.aio.Server:
    """Start an asyncio gRPC server on 0.0.0.0:`port` serving `servicer`.

    `shared_port`: several server workers bind the same port (SO_REUSEPORT; the kernel spreads
    connections over them). Off, a port already taken is an error instead of silently shared with
    whatever holds it (gRPC's own default would share it)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes),
                                      ("grpc.so_reuseport", int(shared_port))])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    try:  # gRPC reports a taken port by raising or by returning 0, depending on the version
        bound = server.add_insecure_port(f"0.0.0.0:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise RuntimeError(f"cannot bind the gRPC port {port} (in use?); set CAPSNET_GRPC_PORT")
    await server.start()
    log.info("gRPC (Open Inference Protocol v2) listening on port %d", port)
    return server


async def serve_over_grpc(models: ModelSource, is_ready: Callable[[], bool], settings: ServingSettings,
                          admission: Admission) -> grpc.aio.Server:
    """The Open Inference Protocol server for `models`, as the settings say."""
    servicer = InferenceServicer(models, is_ready=is_ready, max_images=settings.max_batch_size, admission=admission)
    return await start_grpc_server(servicer, settings.grpc_port, settings.max_request_bytes,
                                   shared_port=settings.workers > 1)
