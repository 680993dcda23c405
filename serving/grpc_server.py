"""Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`, as KServe and Triton
speak it), so existing Triton/KServe clients work unchanged.

The message classes come from tritonclient's generated code of the same .proto. ModelInfer hands
its validated images to the same batched model call as HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from serving.settings import ServingSettings
from serving.triton_config import Tensor, model_config
from serving.validation import InputError, validate_images

log = logging.getLogger(__name__)

Infer = Callable[[np.ndarray], Awaitable[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class GrpcModel:
    """What the servicer needs of one served model."""

    version: str
    infer: Infer  # validated images [N, 1, S, S] -> {output name: [N, ...]}
    image_size: int
    output_dims: dict[str, list[int]]  # per output, the shape after the batch axis
    on_gpu: bool = False  # ONNX Runtime runs it on CUDA (the ModelConfig's instance kind)

    def inputs(self) -> list[Tensor]:
        return [Tensor("image", "FP32", (1, self.image_size, self.image_size))]

    def outputs(self) -> list[Tensor]:
        return [Tensor(name, "FP32", tuple(dims)) for name, dims in self.output_dims.items()]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Implements ServerLive/Ready, ModelReady, Server/ModelMetadata, ModelConfig and ModelInfer for every
    served model (by the protocol's model name); the other methods of the service answer UNIMPLEMENTED
    (the generated base class does that)."""

    def __init__(self, models: dict[str, GrpcModel], is_ready: Callable[[], bool], max_images: int) -> None:
        self.models = models
        self.is_ready = is_ready
        self.max_images = max_images

    async def _model(self, name: str, version: str, context: grpc.aio.ServicerContext) -> GrpcModel:
        model = self.models.get(name)
        if model is None or version not in ("", model.version):
            served = ", ".join(f"{n!r} version {m.version!r}" for n, m in self.models.items())
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown model {name!r} version {version!r}; this server has {served}")
        return model

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.is_ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        await self._model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=self.is_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="capsnet-pipeline", version="0.1.0", extensions=[])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        model = await self._model(request.name, request.version, context)
        T = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name, versions=[model.version], platform="onnxruntime_onnx",
            inputs=[T(name=t.name, datatype=t.datatype, shape=[-1, *t.dims]) for t in model.inputs()],
            outputs=[T(name=t.name, datatype=t.datatype, shape=[-1, *t.dims]) for t in model.outputs()])

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        model = await self._model(request.name, request.version, context)
        return pb.ModelConfigResponse(config=model_config(
            request.name, model.inputs(), model.outputs(), max_batch_size=self.max_images,
            instance_kind="gpu" if model.on_gpu else "cpu"))

    def _images(self, request: Any, image_size: int) -> np.ndarray:
        """The request's one FP32 input as validated [N, 1, S, S]; InputError otherwise."""
        if len(request.inputs) != 1 or request.inputs[0].name != "image":
            raise InputError(f"expected exactly one input named 'image', got {[i.name for i in request.inputs]}")
        tensor = request.inputs[0]
        if tensor.datatype != "FP32":
            raise InputError(f"input 'image' must be FP32, got {tensor.datatype}")
        shape = list(tensor.shape)
        count = int(np.prod(shape)) if shape else 0
        if request.raw_input_contents:
            raw = request.raw_input_contents[0]
            if len(raw) != 4 * count:
                raise InputError(f"raw_input_contents holds {len(raw)} bytes; shape {shape} FP32 needs {4 * count}")
            flat = np.frombuffer(raw, dtype="<f4")
        else:
            flat = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
            if flat.size != count:
                raise InputError(f"fp32_contents holds {flat.size} values; shape {shape} needs {count}")
        if any(d < 0 for d in shape):
            raise InputError(f"shape {shape} has a negative dimension")
        return validate_images(flat.reshape(shape), self.max_images, image_size)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        model = await self._model(request.model_name, request.model_version, context)
        try:
            images = self._images(request, model.image_size)
        except InputError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        wanted = [o.name for o in request.outputs] or list(model.output_dims)
        unknown = set(wanted) - set(model.output_dims)
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown outputs {sorted(unknown)}")
        try:
            outputs = await model.infer(images)
        except Exception:
            log.exception("inference failed")
            await context.abort(grpc.StatusCode.INTERNAL, "inference failed; see the server log")
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=model.version,
                                         id=request.id)
        for name in wanted:
            array = np.ascontiguousarray(outputs[name], dtype="<f4")
            response.outputs.add(name=name, datatype="FP32", shape=list(array.shape))
            response.raw_output_contents.append(array.tobytes())
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


async def serve_over_grpc(models: dict[str, GrpcModel], is_ready: Callable[[], bool], settings: ServingSettings
                          ) -> grpc.aio.Server:
    """The Open Inference Protocol server for `models` (name -> model), as the settings say."""
    servicer = InferenceServicer(models, is_ready=is_ready, max_images=settings.max_batch_size)
    return await start_grpc_server(servicer, settings.grpc_port, settings.max_request_bytes,
                                   shared_port=settings.workers > 1)
