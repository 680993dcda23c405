"""The BentoML shell behind `bentoml serve` (entry: `serving.service:CapsNetService`).

Everything a request needs besides transport lives in serving/core.py (tested without BentoML).
This file wires it to BentoML: the models in the store, the APIs, the batchers, gRPC, readiness.

One `bentoml serve` serves several registered models (CAPSNET_MODEL_TAG, or every capsnet-* model;
see `resolve_models`). Each model gets one `batchable=True` API (`infer` for the default model,
`infer_<name>` for the others): BentoML's adaptive batcher merges concurrent calls for that model
into one ONNX Runtime run. The public APIs (HTTP classify, classify_image and the gRPC ModelInfer)
pick the model, validate and preprocess per request, then hand the array to that model's batcher
in-process (serving/batcher.py): requests from both protocols share batches with each other and
with direct callers of the infer API. (A plain `self.infer(...)` would run unbatched.)
Settings come from CAPSNET_* environment variables (serving/settings.py). No torch, no training code.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, NotFound
from bentoml.validators import ContentType
from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from serving import explorer, http_app
from serving.batcher import Batcher, NotWiredYet, find_batcher
from serving.core import Prediction, ServedModel, ServingCore, UnknownModelError, task_of
from serving.explorer import MAX_ROTATION, MAX_SHIFT, Equivariance, Explanation, Perturbation, Reconstructions
from serving.grpc_server import GrpcModel, InferenceServicer, start_grpc_server
from serving.settings import MODEL_PREFIX, ServingSettings, bento_model_tags
from serving.validation import (
    InputError,
    image_json_schema,
    images_json_schema,
    no_booleans,
    poses_json_schema,
    validate_images,
)

log = logging.getLogger(__name__)
# BentoML sets its own logger to INFO and the root to WARNING: without this, our INFO lines (the
# provider in use, the gRPC port) would never reach `bentoml serve`'s output.
logging.getLogger("serving").setLevel(logging.getLogger("bentoml").getEffectiveLevel())
settings = ServingSettings.from_env()


def objects_of(model: bentoml.Model) -> int:
    """How many objects one input of this registered export holds (exports before tasks: one)."""
    return int(task_of(model.info.metadata)["objects"])


def resolve_models(tags: tuple[str, ...]) -> list[bentoml.Model]:
    """The stored models to serve, the default one (a single-object model, capsnet-mnist first)
    first: `tags` if given; else, in a built Bento, the models it was built with; else (the source
    tree) the newest version of every capsnet-* model. Exits saying how to create one if none."""
    wanted = list(tags) or bento_model_tags(Path(__file__).resolve().parents[1])
    if wanted:
        found, missing = [], []
        for tag in wanted:
            try:
                found.append(bentoml.models.get(tag))
            except NotFound:
                missing.append(tag)
    else:
        newest: dict[str, bentoml.Model] = {}
        for model in bentoml.models.list():
            name = model.tag.name
            if name.startswith(MODEL_PREFIX) and (name not in newest or
                                                  model.info.creation_time > newest[name].info.creation_time):
                newest[name] = model
        found, missing = list(newest.values()), ([] if newest else [f"{MODEL_PREFIX}mnist"])
    if missing or not found:
        sys.stderr.write(
            f"\nNo model {', '.join(repr(m) for m in missing)} in the BentoML model store. Create one with\n"
            "    make pipeline\n"
            "or, from an existing checkpoint,\n"
            "    capsnet-export RUN/best.pt -o RUN/export\n"
            "(or point CAPSNET_MODEL_TAG at registered models, comma-separated: `bentoml models list`).\n\n")
        raise SystemExit(2)
    return sorted(found, key=lambda m: (objects_of(m) != 1, m.tag.name != f"{MODEL_PREFIX}mnist", m.tag.name))


# Resolved at import: BentoML packs the models named here into a Bento when it is built.
MODELS = resolve_models(settings.model_tags)
SIZES = tuple(sorted({m.info.metadata["model_config"]["image_size"] for m in MODELS}))
NAMES = [m.tag.name for m in MODELS]


@contextmanager
def client_errors() -> Iterator[None]:
    """A client's mistake (InputError) becomes BentoML's 400 with the message."""
    try:
        yield
    except InputError as e:
        raise InvalidArgument(str(e)) from None


def infer_api_name(index: int) -> str:
    """`infer` for the default model (MODELS[0]), `infer_<model name>` for the others."""
    return "infer" if index == 0 else "infer_" + re.sub(r"[^a-z0-9]+", "_", MODELS[index].tag.name.lower())


# What clients may send, stated in the OpenAPI document (validation itself is validate_images).
_side = SIZES[0]
_stroke = [[1.0 if abs(x - _side // 2) <= 1 and 4 <= y < _side - 4 else 0.0 for x in range(_side)]
           for y in range(_side)]  # a vertical bar, a "1": the OpenAPI document's example image
Images = Annotated[np.ndarray, BeforeValidator(no_booleans),
                   WithJsonSchema({**images_json_schema(settings.max_batch_size, SIZES), "examples": [[_stroke]]})]
ImageFiles = Annotated[list[Path], Field(min_length=1, max_length=settings.max_batch_size)]
ModelName = Annotated[str, Field(description=f"which served model answers (default: {NAMES[0]})",
                                 json_schema_extra={"enum": NAMES})]
RECONSTRUCTING = [m.tag.name for m in MODELS if "reconstructions_top2" in m.info.metadata["outputs"]]
# strict: 0 or "yes" is a client mistake, not False/True; only `false` is valid when no model can redraw
WithReconstructions = Annotated[bool, Field(
    strict=True, description="also return each found object's reconstruction; models that can: "
                             + (", ".join(RECONSTRUCTING) or "none (export with --with-top2-reconstructions)"),
    json_schema_extra=None if RECONSTRUCTING else {"enum": [False]})]

# Declaring the media type spares BentoML rebuilding the response's JSON schema for every response
# just to find out it is JSON (IOMixin.mime_type; ~10 % of server CPU under load). Same schema in /docs.
Predictions = Annotated[list[Prediction], ContentType("application/json")]

# The explorer's inputs (serving/explorer.py), with examples for the OpenAPI document.
CLASSES = max(len(m.info.metadata["class_names"]) for m in MODELS)
POSE_SHAPES = tuple(sorted({(len(m.info.metadata["class_names"]), m.info.metadata["model_config"]["digit_dim"])
                            for m in MODELS}))
_k, _d = POSE_SHAPES[0]
OneImage = Annotated[np.ndarray, BeforeValidator(no_booleans),
                     WithJsonSchema({**image_json_schema(SIZES), "examples": [_stroke]})]
_pose = [[0.0] * _d for _ in range(_k)]
_pose[1] = [0.05] * _d
Poses = Annotated[np.ndarray, BeforeValidator(no_booleans),
                  WithJsonSchema({**poses_json_schema(settings.max_batch_size, POSE_SHAPES), "examples": [[_pose]]})]
# Not `int | None`: the document would say integer (BentoML flattens the anyOf) yet accept null.
# Leave the field out for the default; strict: "3" or true is a client mistake, not 3 or 1.
Label = Annotated[int, Field(ge=0, le=CLASSES - 1, strict=True, examples=[1],
                             description="the class capsule to draw (leave out: the longest)")]


def batched_infer_api(index: int) -> Any:
    """The batchable API of MODELS[index]: validated images -> one row of packed outputs per image."""
    stored = MODELS[index]
    config, size = stored.info.metadata["model_config"], stored.info.metadata["model_config"]["image_size"]
    k, d = len(stored.info.metadata["class_names"]), config["digit_dim"]
    width = k * (1 + d) + (2 * size * size if "reconstructions_top2" in stored.info.metadata["outputs"] else 0)

    def validated(images: np.ndarray) -> np.ndarray:
        return validate_images(images, settings.max_batch_size, size)  # InputError is a ValueError: a 400

    def infer(self: Any, images: np.ndarray) -> np.ndarray:
        return self.core.models[index].runtime.infer_packed(images)

    infer.__name__ = infer.__qualname__ = infer_api_name(index)
    infer.__doc__ = (f"Low-level batched endpoint of {stored.tag.name}: images [N, 1, {size}, {size}] float32 in "
                     f"[0, 1] -> [N, {width}] (capsule lengths, the flattened poses, then any reconstructions). "
                     "Each request is validated on its own before BentoML merges it into a batch, so a bad "
                     "request never fails its batch-mates.")
    infer.__annotations__ = {
        "images": Annotated[np.ndarray, WithJsonSchema(images_json_schema(settings.max_batch_size, (size,))),
                            AfterValidator(validated)],
        "return": Annotated[np.ndarray, WithJsonSchema({
            "type": "array", "description": f"per image, {k} capsule lengths, the {k}x{d} poses flattened, "
                                            "then any reconstructions",
            "items": {"type": "array", "items": {"type": "number"}, "minItems": width, "maxItems": width}})],
    }
    return bentoml.api(batchable=True, max_batch_size=settings.max_batch_size,
                       max_latency_ms=settings.max_latency_ms)(infer)


class _CapsNetService:
    """Classify handwritten digits, and pairs of overlapping digits, with Capsule Networks (Sabour et
    al. 2017), served from ONNX."""

    def __init__(self) -> None:
        # several workers share the cores: each ONNX Runtime gets its share instead of all of them
        threads = 0 if settings.workers == 1 else max(1, (os.cpu_count() or 1) // settings.workers)
        served = [ServedModel.load(str(m.tag), getattr(self, f"model_ref_{i}").path, m.info.metadata, threads)
                  for i, m in enumerate(MODELS)]
        self.core = ServingCore(served, settings)
        for model in served:
            model.runtime.warm_up(settings.max_batch_size)
            log.info("serving model %s (%dx%d input, %d object(s) per input)", model.tag, model.image_size,
                     model.image_size, model.objects)
        if not self.core.gpu_ok():
            log.error("CAPSNET_REQUIRE_GPU is set but ONNX Runtime runs on %s: readiness will fail (%s)",
                      [m.runtime.provider for m in served], served[0].runtime.cuda_unavailable)
        self.grpc_server: Any = None
        self._batchers: dict[str, Batcher | None] = {}  # API name -> BentoML's batcher in-process (None: absent)

    def _batched_infer(self, index: int) -> Batcher:
        """MODELS[index]'s infer API through BentoML's batcher: called in-process when found
        (serving/batcher.py says why), else through BentoML's own self.to_async. Neither is cached
        before BentoML has wired the app (after our startup hooks): until then self.to_async is the
        plain, unbatched method."""
        name = infer_api_name(index)
        self._look_up_batcher(name)
        return self._batchers.get(name) or getattr(self.to_async, name)

    def _look_up_batcher(self, name: str) -> None:
        """Find BentoML's batcher for API `name` for in-process calls, once BentoML has wired the app."""
        if settings.in_process_batcher and name not in self._batchers:
            try:
                self._batchers[name] = find_batcher(self, name)
            except NotWiredYet:
                pass

    async def _predict(self, images: np.ndarray, model: ServedModel) -> dict[str, np.ndarray]:
        """Validated [N, 1, S, S] for `model` -> its unpacked outputs, via its batcher."""
        index = self.core.models.index(model)
        return self.core.unpack(await self._batched_infer(index)(images), model)

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        def infer_with(model: ServedModel) -> Any:
            async def infer(images: np.ndarray) -> dict[str, np.ndarray]:
                return await self._predict(images, model)
            return infer

        models = {m.name: GrpcModel(m.version, infer_with(m), m.image_size, m.output_dims) for m in self.core.models}
        servicer = InferenceServicer(models, is_ready=self._ready, max_images=settings.max_batch_size)
        self.grpc_server = await start_grpc_server(servicer, settings.grpc_port, settings.max_request_bytes,
                                                   shared_port=settings.workers > 1)

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=2)

    def _ready(self) -> bool:
        """Ready = on the GPU if one is required, gRPC up, and, for the in-process batcher only, its
        lookup answered for every model (BentoML wires the app after the startup hooks). The to_async
        fallback needs no BentoML internals: it is looked up on every call."""
        names = [infer_api_name(i) for i in range(len(MODELS))]
        for name in names:
            self._look_up_batcher(name)
        looked_up = not settings.in_process_batcher or all(name in self._batchers for name in names)
        return self.core.gpu_ok() and self.grpc_server is not None and looked_up

    async def __is_ready__(self) -> bool:  # BentoML's /readyz
        return self._ready()

    def _model(self, name: str) -> ServedModel:
        try:
            return self.core.model_named(name)
        except UnknownModelError as e:
            raise NotFound(str(e)) from None

    async def _answer(self, batch: np.ndarray, model: ServedModel, reconstructions: bool) -> list[Prediction]:
        outputs = await self._predict(batch, model)
        with client_errors():
            return self.core.predictions(outputs, model, reconstructions)

    @bentoml.api
    async def classify(self, images: Images, model: ModelName = NAMES[0],
                       reconstructions: WithReconstructions = False) -> Predictions:
        """Classify a batch of images given as arrays: [N, S, S] or [N, 1, S, S], floats in [0, 1]
        (MNIST pixels divided by 255), S the model's input size (28 for digits, 36 for overlapping
        pairs). Returns, per image, the label, the 10 capsule lengths, the 10 pose vectors, and the
        objects found (1 for a digit model, 2 for a pair model: the longest capsules)."""
        served = self._model(model)
        with client_errors():
            batch = self.core.validate(images, served)
        return await self._answer(batch, served, reconstructions)

    @bentoml.api
    async def classify_image(self, images: ImageFiles, model: ModelName = NAMES[0],
                             reconstructions: WithReconstructions = False) -> Predictions:
        """Classify uploaded PNG or JPEG files of any size (multipart form field `images`, one or
        more files; optional form fields `model`, `reconstructions`). Each is made MNIST-like first:
        grayscale, inverted if dark-on-light, the paper taken to 0 and the ink to about 1 (uneven
        light, tinted paper, JPEG noise), cropped to the ink, scaled to fit the model's input less a
        4-pixel margin (20x20 in 28x28), centred by centre of mass."""
        served = self._model(model)
        with client_errors():
            batch = self.core.decode_uploads([Path(p).read_bytes() for p in images], served)
        return await self._answer(batch, served, reconstructions)

    # The explorer's APIs (serving/explorer.py; the page at /explorer/ calls these). Plain functions:
    # BentoML runs them in its thread pool, outside the batcher (large, interactive answers).

    @bentoml.api
    def explain(self, images: Images, model: ModelName = NAMES[0]) -> Annotated[
            list[Explanation], ContentType("application/json")]:
        """What classify returns for each image, plus the reconstruction from the longest capsule and
        the part-whole map: for each class capsule, how much of every primary capsule (part) was
        routed to it, by capsule type and grid cell, with each cell's receptive field in the input.
        Needs a model exported with `capsnet-export --with-explorer`."""
        with client_errors():
            return explorer.explain(self.core, self._model(model), images)

    @bentoml.api
    def explain_image(self, images: ImageFiles, model: ModelName = NAMES[0]) -> Annotated[
            list[Explanation], ContentType("application/json")]:
        """explain for uploaded PNG or JPEG files (prepared as classify_image prepares them); each
        answer's `input` is the image the model saw."""
        served = self._model(model)
        with client_errors():
            batch = self.core.decode_uploads([Path(p).read_bytes() for p in images], served)
            return explorer.explain(self.core, served, batch)

    @bentoml.api
    def reconstruct(self, poses: Poses, label: Label = None,  # type: ignore[assignment]  # None: left out
                    model: ModelName = NAMES[0]) -> Reconstructions:
        """Redraw capsule poses [N][classes][pose dims] with the decoder, masked to `label`'s capsule
        (default: each set's longest). Poses as explain returns them, edited or not."""
        with client_errors():
            return explorer.reconstruct(self.core, self._model(model), poses, label)

    @bentoml.api
    def perturb(self, image: OneImage, label: Label = None,  # type: ignore[assignment]  # None: left out
                model: ModelName = NAMES[0]) -> Perturbation:
        """The paper's Fig. 4 for one image: each dimension of the `label` capsule's pose (default:
        the longest) moved from -0.25 to +0.25 in steps of 0.05, one at a time, each redrawn."""
        with client_errors():
            return explorer.perturb(self._model(model), image, label)

    @bentoml.api
    def equivariance(self, image: OneImage,
                     max_shift: Annotated[int, Field(ge=0, le=MAX_SHIFT, strict=True, examples=[3])] = 3,
                     max_rotation: Annotated[float, Field(ge=0, le=MAX_ROTATION, strict=True, examples=[30])] = 30.0,
                     model: ModelName = NAMES[0]) -> Equivariance:
        """One image shifted along x and y by up to max_shift pixels and rotated by up to
        max_rotation degrees: for each view the predicted class, the winning length and the pose of
        the original class's capsule (the pose should move with the image, the class should not)."""
        with client_errors():
            return explorer.equivariance(self._model(model), image, max_shift, max_rotation)

    @bentoml.api(route="/metadata")
    async def metadata(self) -> dict[str, Any]:
        """The served models (each with its input size and task; the default one's details at the top
        level), the ONNX Runtime provider in use, batching settings and statistics, versions."""
        self._look_up_batcher("infer")  # so in_process below is known before the first request
        answer = self.core.metadata(batcher_in_process=self._batchers.get("infer") is not None)
        answer["versions"]["bentoml"] = bentoml.__version__
        return answer


for _index, _stored in enumerate(MODELS):
    setattr(_CapsNetService, f"model_ref_{_index}", bentoml.models.BentoModel(str(_stored.tag)))
    setattr(_CapsNetService, infer_api_name(_index), batched_infer_api(_index))

# runner_connection: for the fallback path only (serving/batcher.py). BentoML's client behind
# self.to_async replaces its HTTP session every 100 requests by default and closes the old one under
# requests still in flight (BentoML issue #5540: "Server disconnected" under load). The in-process
# connection has nothing to go stale: keep it.
CapsNetService = bentoml.service(name="capsnet", workers=settings.workers, traffic={"timeout": 60},
                                 runner_connection={"max_requests": 1_000_000_000, "max_age": 1e9})(_CapsNetService)
http_app.install(CapsNetService, settings.max_request_bytes,
                 uploads={"/classify_image": "images", "/explain_image": "images"})
# The explorer page (serving/explorer/: static files, no build step) at /explorer/.
CapsNetService.mount_asgi_app(http_app.explorer_page(), path="/explorer", name="explorer")
