"""The BentoML service behind `bentoml serve` (entry: `serving.service:CapsNetService`).

`infer` is the one `batchable=True` API: BentoML's adaptive batcher merges concurrent calls into one
ONNX Runtime run. The public APIs (HTTP classify, classify_image and the gRPC ModelInfer) validate
and preprocess per request, then hand the array to that batcher in-process (serving/batcher.py):
requests from both protocols share batches with each other and with direct callers of /infer.
(A plain `self.infer(...)` would run unbatched.)
Settings come from CAPSNET_* environment variables (serving/settings.py). No torch, no training code.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import onnxruntime as ort
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound
from bentoml.validators import ContentType
from pydantic import AfterValidator, BaseModel, Field

from serving.batcher import Batcher, find_batcher
from serving.grpc_server import InferenceServicer, start_grpc_server
from serving.http_limits import BodySizeLimit
from serving.preprocess import preprocess_encoded
from serving.runtime import CUDA, CapsNetRuntime
from serving.settings import ServingSettings
from serving.validation import InputError, validate_images

log = logging.getLogger(__name__)
# BentoML sets its own logger to INFO and the root to WARNING: without this, our INFO lines (the
# provider in use, the gRPC port) would never reach `bentoml serve`'s output.
logging.getLogger("serving").setLevel(logging.getLogger("bentoml").getEffectiveLevel())
settings = ServingSettings.from_env()


def resolve_model(tag: str) -> bentoml.Model:
    """The stored model for `tag`, or exit saying how to create one."""
    try:
        return bentoml.models.get(tag)
    except NotFound:
        sys.stderr.write(
            f"\nNo model '{tag}' in the BentoML model store. Create one with\n"
            "    make pipeline\n"
            "or, from an existing checkpoint,\n"
            "    capsnet-export RUN/best.pt -o RUN/export\n"
            "(or point CAPSNET_MODEL_TAG at a registered model: `bentoml models list`).\n\n")
        raise SystemExit(2) from None


MODEL = resolve_model(settings.model_tag)


def _validated(images: np.ndarray) -> np.ndarray:
    return validate_images(images, settings.max_batch_size)  # InputError is a ValueError: 400


class Prediction(BaseModel):
    label: int = Field(description="predicted class: the longest digit capsule")
    class_name: str
    probabilities: list[float] = Field(description="length of each class capsule, in [0, 1)")
    poses: list[list[float]] = Field(description="the class capsules' pose vectors [classes][pose dims]")


# Declaring the media type spares BentoML rebuilding the response's JSON schema for every response
# just to find out it is JSON (IOMixin.mime_type; ~10 % of server CPU under load). Same schema in /docs.
Predictions = Annotated[list[Prediction], ContentType("application/json")]


# runner_connection: for the fallback path only (serving/batcher.py). BentoML's client behind
# self.to_async replaces its HTTP session every 100 requests by default and closes the old one under
# requests still in flight (BentoML issue #5540: "Server disconnected" under load). The in-process
# connection has nothing to go stale: keep it.
@bentoml.service(name="capsnet", workers=settings.workers, traffic={"timeout": 60},
                 runner_connection={"max_requests": 1_000_000_000, "max_age": 1e9})
class CapsNetService:
    """Classify handwritten digits with a Capsule Network (Sabour et al. 2017), served from ONNX."""

    model_ref = bentoml.models.BentoModel(str(MODEL.tag))

    def __init__(self) -> None:
        # several workers share the cores: each ONNX Runtime gets its share instead of all of them
        threads = 0 if settings.workers == 1 else max(1, (os.cpu_count() or 1) // settings.workers)
        self.runtime = CapsNetRuntime(self.model_ref.path, intra_op_threads=threads)
        self.runtime.warm_up(settings.max_batch_size)
        if settings.require_gpu and self.runtime.provider != CUDA:
            log.error("CAPSNET_REQUIRE_GPU is set but ONNX Runtime runs on %s: readiness will fail",
                      self.runtime.provider)
        self.config = self.runtime.config
        self.class_names: list[str] = self.config["class_names"]
        self.pose_dim: int = self.runtime.pose_dim
        self.grpc_server: Any = None
        self._batcher: Batcher | None = None
        self._batcher_in_process = False

    @bentoml.api(batchable=True, max_batch_size=settings.max_batch_size, max_latency_ms=settings.max_latency_ms)
    def infer(self, images: Annotated[np.ndarray, AfterValidator(_validated)]) -> np.ndarray:
        """Low-level batched endpoint: images [N, 1, 28, 28] float32 in [0, 1] -> [N, 10 + 10*16]
        (capsule lengths, then the flattened poses). Each request is validated on its own before
        BentoML merges it into a batch, so a bad request never fails its batch-mates."""
        return self.runtime.infer_packed(images)

    def _batched_infer(self) -> Batcher:
        """`infer` through BentoML's batcher, called in-process (serving/batcher.py says why not
        through self.to_async). Resolved on first use: BentoML wires it up after the startup hooks."""
        if self._batcher is None:
            found = find_batcher(self, "infer") if settings.in_process_batcher else None
            self._batcher_in_process = found is not None
            self._batcher = found or self.to_async.infer
        return self._batcher

    async def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validated [N, 1, 28, 28] -> (probabilities [N, K], poses [N, K, D]) via the batcher."""
        packed = await self._batched_infer()(images)
        probabilities, poses = self.runtime.unpack(np.asarray(packed, np.float32))
        if not (np.isfinite(probabilities).all() and np.isfinite(poses).all()):
            raise BentoMLException("the model produced non-finite values; refusing to return them")
        return probabilities, poses

    def _predictions(self, probabilities: np.ndarray, poses: np.ndarray) -> list[Prediction]:
        labels = probabilities.argmax(axis=1)
        return [Prediction(label=int(k), class_name=self.class_names[k], probabilities=p.tolist(),
                           poses=v.tolist()) for k, p, v in zip(labels, probabilities, poses, strict=True)]

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        k = len(self.class_names)

        async def infer(images: np.ndarray) -> dict[str, np.ndarray]:
            probabilities, poses = await self._predict(images)
            return {"probabilities": probabilities, "poses": poses}

        servicer = InferenceServicer(
            model_name=MODEL.tag.name, model_version=MODEL.tag.version or "", infer=infer,
            is_ready=self._ready, max_images=settings.max_batch_size,
            output_dims={"probabilities": [k], "poses": [k, self.pose_dim]})
        self.grpc_server = await start_grpc_server(servicer, settings.grpc_port, settings.max_request_bytes,
                                                   shared_port=settings.workers > 1)

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=2)

    def _ready(self) -> bool:
        """Ready = on the GPU if one is required, gRPC up, and BentoML done wiring the app (it sets
        __self_proxy__ after the startup hooks; the batcher is found through it)."""
        gpu_ok = not settings.require_gpu or self.runtime.provider == CUDA
        return gpu_ok and self.grpc_server is not None and getattr(self, "__self_proxy__", None) is not None

    async def __is_ready__(self) -> bool:  # BentoML's /readyz
        return self._ready()

    @bentoml.api
    async def classify(self, images: np.ndarray) -> Predictions:
        """Classify a batch of images given as arrays: [N, 28, 28] or [N, 1, 28, 28], floats in [0, 1]
        (MNIST pixels divided by 255). Returns, per image, the label, the 10 capsule lengths and
        the 10x16 pose vectors."""
        try:
            batch = validate_images(images, settings.max_batch_size)
        except InputError as e:
            raise InvalidArgument(str(e)) from None
        return self._predictions(*await self._predict(batch))

    @bentoml.api
    async def classify_image(self, images: list[Path]) -> Predictions:
        """Classify uploaded PNG or JPEG files of any size (multipart form field `images`, one or
        more files). Each is made MNIST-like first: grayscale, inverted if dark-on-light, cropped to
        the ink, scaled to fit 20x20, centred by centre of mass in 28x28."""
        if not images:
            raise InvalidArgument("no image uploaded: send one or more files in the form field 'images'")
        if len(images) > settings.max_batch_size:
            raise InvalidArgument(f"{len(images)} images in one request; the limit is {settings.max_batch_size}")
        decoded = []
        for index, path in enumerate(images):
            try:
                decoded.append(preprocess_encoded(Path(path).read_bytes()))
            except InputError as e:
                raise InvalidArgument(f"image {index}: {e}") from None
        return self._predictions(*await self._predict(np.stack(decoded)))

    @bentoml.api(route="/metadata")
    async def metadata(self) -> dict[str, Any]:
        """The served model: tag, config, classes, routing iterations, parity summary, the ONNX
        Runtime provider in use, batching settings and statistics, versions."""
        info = MODEL.info
        self._batched_infer()  # resolve it, so in_process below is known before the first request
        return {
            "model_tag": str(MODEL.tag),
            "model_config": self.config["model_config"],
            "class_names": self.class_names,
            "routing_iters": self.config["routing_iters"],
            "outputs": {"probabilities": [len(self.class_names)], "poses": [len(self.class_names), self.pose_dim]},
            # only what the export recorded: a model from an interrupted run has no test accuracy
            "accuracy": {name: info.metadata[key] for name, key in (("validation", "val_accuracy"),
                         ("test", "test_accuracy")) if info.metadata.get(key) is not None},
            "parity": info.metadata.get("parity"),
            "provider": self.runtime.provider,
            "providers": self.runtime.session.get_providers(),
            "require_gpu": settings.require_gpu,
            # the statistics are this worker's; /metrics has BentoML's adaptive_batch_size for all
            "batching": {"max_batch_size": settings.max_batch_size, "max_latency_ms": settings.max_latency_ms,
                         "workers": settings.workers,
                         "in_process": self._batcher_in_process,  # false: the slower to_async fallback
                         **self.runtime.stats()},
            "grpc_port": settings.grpc_port,
            "versions": {"onnxruntime": ort.__version__, "bentoml": bentoml.__version__,
                         "numpy": np.__version__, "python": platform.python_version(),
                         "exported_with": self.config.get("versions", {})},
        }


CapsNetService.add_asgi_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
