"""The BentoML shell behind `bentoml serve` (entry: `serving.service:CapsNetService`).

Everything a request needs besides transport lives in serving/core.py (tested without BentoML).
This file wires it to BentoML: the model in the store, the APIs, the batcher, gRPC, readiness.

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
import sys
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, NotFound
from bentoml.validators import ContentType
from pydantic import AfterValidator, Field, WithJsonSchema

from serving import http_app
from serving.batcher import Batcher, NotWiredYet, find_batcher
from serving.core import Prediction, ServedModel, ServingCore
from serving.grpc_server import InferenceServicer, start_grpc_server
from serving.settings import DEFAULT_MODEL_TAG, ServingSettings, bento_model_tag
from serving.validation import InputError, images_json_schema, validate_images

log = logging.getLogger(__name__)
# BentoML sets its own logger to INFO and the root to WARNING: without this, our INFO lines (the
# provider in use, the gRPC port) would never reach `bentoml serve`'s output.
logging.getLogger("serving").setLevel(logging.getLogger("bentoml").getEffectiveLevel())
settings = ServingSettings.from_env()


def resolve_model(tag: str | None) -> bentoml.Model:
    """The stored model to serve: `tag` if given; else, in a built Bento, the model it was built
    with; else (the source tree) the newest capsnet-mnist. Exits saying how to create one if none."""
    tag = tag or bento_model_tag(Path(__file__).resolve().parents[1]) or DEFAULT_MODEL_TAG
    try:
        return bentoml.models.get(tag)
    except NotFound:
        pass
    sys.stderr.write(
        f"\nNo model '{tag}' in the BentoML model store. Create one with\n"
        "    make pipeline\n"
        "or, from an existing checkpoint,\n"
        "    capsnet-export RUN/best.pt -o RUN/export\n"
        "(or point CAPSNET_MODEL_TAG at a registered model: `bentoml models list`).\n\n")
    raise SystemExit(2)


# Resolved at import: BentoML packs the models named here into a Bento when it is built.
MODEL = resolve_model(settings.model_tag)


def _validated(images: np.ndarray) -> np.ndarray:
    return validate_images(images, settings.max_batch_size)  # InputError is a ValueError: a 400


# What clients may send, stated in the OpenAPI document (validation itself is validate_images).
Images = Annotated[np.ndarray, WithJsonSchema(images_json_schema(settings.max_batch_size))]
ImageFiles = Annotated[list[Path], Field(min_length=1, max_length=settings.max_batch_size)]
_K, _D = len(MODEL.info.metadata["class_names"]), MODEL.info.metadata["model_config"]["digit_dim"]
PackedOutputs = Annotated[np.ndarray, WithJsonSchema({
    "type": "array", "description": f"per image, {_K} capsule lengths then the {_K}x{_D} poses flattened",
    "items": {"type": "array", "items": {"type": "number"}, "minItems": _K * (1 + _D), "maxItems": _K * (1 + _D)}})]

# Declaring the media type spares BentoML rebuilding the response's JSON schema for every response
# just to find out it is JSON (IOMixin.mime_type; ~10 % of server CPU under load). Same schema in /docs.
Predictions = Annotated[list[Prediction], ContentType("application/json")]


def client_error(e: InputError) -> InvalidArgument:
    return InvalidArgument(str(e))


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
        served = ServedModel.load(str(MODEL.tag), self.model_ref.path, MODEL.info.metadata, threads)
        self.core = ServingCore([served], settings)
        served.runtime.warm_up(settings.max_batch_size)
        log.info("serving model %s", served.tag)
        if not self.core.gpu_ok():
            log.error("CAPSNET_REQUIRE_GPU is set but ONNX Runtime runs on %s: readiness will fail",
                      served.runtime.provider)
        self.grpc_server: Any = None
        self._batcher: Batcher | None = None  # BentoML's batcher, called in-process, once found
        self._batcher_looked_up = False  # the lookup has had its answer (found, or not there)

    @bentoml.api(batchable=True, max_batch_size=settings.max_batch_size, max_latency_ms=settings.max_latency_ms)
    def infer(self, images: Annotated[Images, AfterValidator(_validated)]) -> PackedOutputs:
        """Low-level batched endpoint: images [N, 1, 28, 28] float32 in [0, 1] -> [N, 10 + 10*16]
        (capsule lengths, then the flattened poses). Each request is validated on its own before
        BentoML merges it into a batch, so a bad request never fails its batch-mates."""
        return self.core.infer_packed(images)

    def _batched_infer(self) -> Batcher:
        """`infer` through BentoML's batcher: called in-process when found (serving/batcher.py says
        why), else through BentoML's own self.to_async. Neither is cached before BentoML has wired
        the app (after our startup hooks): until then self.to_async is the plain, unbatched method."""
        self._look_up_batcher()
        return self._batcher or self.to_async.infer

    def _look_up_batcher(self) -> None:
        """Find BentoML's batcher for in-process calls, once BentoML has wired the app."""
        if settings.in_process_batcher and not self._batcher_looked_up:
            try:
                self._batcher = find_batcher(self, "infer")
                self._batcher_looked_up = True
            except NotWiredYet:
                pass

    async def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validated [N, 1, 28, 28] -> (probabilities [N, K], poses [N, K, D]) via the batcher."""
        return self.core.unpack(await self._batched_infer()(images))

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        async def infer(images: np.ndarray) -> dict[str, np.ndarray]:
            probabilities, poses = await self._predict(images)
            return {"probabilities": probabilities, "poses": poses}

        model = self.core.model
        servicer = InferenceServicer(model_name=model.name, model_version=model.version, infer=infer,
                                     is_ready=self._ready, max_images=settings.max_batch_size,
                                     output_dims=model.output_dims)
        self.grpc_server = await start_grpc_server(servicer, settings.grpc_port, settings.max_request_bytes,
                                                   shared_port=settings.workers > 1)

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=2)

    def _ready(self) -> bool:
        """Ready = on the GPU if one is required, gRPC up, and, for the in-process batcher only, its
        lookup answered (BentoML wires the app after the startup hooks). The to_async fallback needs
        no BentoML internals: it is looked up on every call."""
        self._look_up_batcher()
        looked_up = not settings.in_process_batcher or self._batcher_looked_up
        return self.core.gpu_ok() and self.grpc_server is not None and looked_up

    async def __is_ready__(self) -> bool:  # BentoML's /readyz
        return self._ready()

    @bentoml.api
    async def classify(self, images: Images) -> Predictions:
        """Classify a batch of images given as arrays: [N, 28, 28] or [N, 1, 28, 28], floats in [0, 1]
        (MNIST pixels divided by 255). Returns, per image, the label, the 10 capsule lengths and
        the 10x16 pose vectors."""
        try:
            batch = self.core.validate(images)
        except InputError as e:
            raise client_error(e) from None
        return self.core.predictions(*await self._predict(batch))

    @bentoml.api
    async def classify_image(self, images: ImageFiles) -> Predictions:
        """Classify uploaded PNG or JPEG files of any size (multipart form field `images`, one or
        more files). Each is made MNIST-like first: grayscale, inverted if dark-on-light, cropped to
        the ink, scaled to fit 20x20, centred by centre of mass in 28x28."""
        try:
            batch = self.core.decode_uploads([Path(p).read_bytes() for p in images])
        except InputError as e:
            raise client_error(e) from None
        return self.core.predictions(*await self._predict(batch))

    @bentoml.api(route="/metadata")
    async def metadata(self) -> dict[str, Any]:
        """The served model: tag, config, classes, routing iterations, parity summary, the ONNX
        Runtime provider in use, batching settings and statistics, versions."""
        self._look_up_batcher()  # so in_process below is known before the first request
        answer = self.core.metadata(batcher_in_process=self._batcher is not None)
        answer["versions"]["bentoml"] = bentoml.__version__
        return answer


http_app.install(CapsNetService, settings.max_request_bytes, uploads={"/classify_image": "images"})
