"""The BentoML shell behind `bentoml serve` (entry: `serving.service:CapsNetService`): declarations that
delegate to serving/handlers/classify.py (requests), serving/handlers/explorer.py (the explorer's APIs) and
serving/oip/listeners.py (the Open Inference Protocol over gRPC and REST).

One `bentoml serve` serves several registered models, each in one or more versions (serving/engine/repository.py:
version policies; with CAPSNET_MODEL_CONTROL=explicit, loaded and unloaded while serving). Every
protocol validates per request, then hands the array to the version's batcher (serving/engine/batcher.py), so
the BentoML APIs (classify, classify_image, the low-level `infer`, `infer_<name>`), OIP REST and gRPC
share batches and statistics (serving/engine/statistics.py; nv_inference_* on /metrics). Every protocol's
requests to a model pass one admission (serving/engine/admission.py): a full model answers 503 + Retry-After /
UNAVAILABLE at once. Every BentoML answer about a model names the version that answered in the
X-CapsNet-Model header. Settings: CAPSNET_* variables (serving/settings.py). No torch, no training code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, NotFound, ServiceUnavailable, UnprocessableEntity

from serving.bento import middleware as http_app
from serving.bento import prometheus as metrics
from serving.bento.api_types import (
    Explanations,
    ImageFiles,
    Images,
    Label,
    ModelName,
    OneImage,
    Poses,
    Predictions,
    Rotation,
    Shift,
    WithReconstructions,
    infer_api_name,
    per_model_attributes,
)
from serving.bento.store import NAMES, WANTED, list_store, path_and_metadata, settings
from serving.engine.admission import Admission, Overloaded
from serving.handlers import explorer
from serving.handlers.classify import Prediction, ServedModel, ServingCore, UnknownModelError
from serving.handlers.explorer import Equivariance, Perturbation, Reconstructions
from serving.handlers.validation import CapabilityError, InputError
from serving.oip.listeners import ProtocolServers, ServedOipModels

MODEL_HEADER = "X-CapsNet-Model"  # name:version of the model version that answered

# `bentoml serve` sends BentoML usage telemetry unless BENTOML_DO_NOT_TRACK is true. Our server does
# not by default, under make or not (it reads the variable when it reports, after this import); an
# operator who wants to send it sets BENTOML_DO_NOT_TRACK=False. The start-up log says which.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

# BentoML sets its own logger to INFO and the root to WARNING: without this, our INFO lines (the
# provider in use, the protocol ports) would never reach `bentoml serve`'s output.
logging.getLogger("serving").setLevel(logging.getLogger("bentoml").getEffectiveLevel())


@contextmanager
def client_errors() -> Iterator[None]:
    """A client's mistake becomes 400 (InputError), 422 (a capability the model lacks) or 404 (an unknown
    model), with the message."""
    try:
        yield
    except CapabilityError as e:
        raise UnprocessableEntity(str(e)) from None
    except InputError as e:
        raise InvalidArgument(str(e)) from None
    except UnknownModelError as e:
        raise NotFound(str(e)) from None
    except Overloaded as e:  # answered 503 + Retry-After by http_app.AdmissionGate, without a traceback
        raise ServiceUnavailable(str(e)) from None


# One per server process, shared by the BentoML APIs (http_app.AdmissionGate), OIP REST and gRPC.
admission = Admission(settings.max_queue, settings.retry_after_s, on_refused=metrics.count_refused)
# The repository's served versions by name (it keeps them in this dict), for the admission gate in front
# of BentoML's app, which runs before the service instance is reached.
SERVED_NOW: dict[str, list[ServedModel]] = {}


class _CapsNetService:
    """Classify handwritten digits, and pairs of overlapping digits, with Capsule Networks (Sabour et
    al. 2017), served from ONNX."""

    def __init__(self) -> None:
        self.core = ServingCore.start(lambda: list_store(tuple(WANTED)), path_and_metadata, WANTED, settings,
                                      admission, statistics_hooks=metrics.STATISTICS_HOOKS, served=SERVED_NOW)
        self.protocols: ProtocolServers | None = None
        tracking = os.environ["BENTOML_DO_NOT_TRACK"].strip().lower() != "true"
        log = logging.getLogger(__name__)
        log.info("default model %s; version policy %s; model control %s", self.core.default_name,
                 settings.version_policy, settings.model_control)
        log.info("BentoML usage telemetry %s (BENTOML_DO_NOT_TRACK=%s)",
                 "on" if tracking else "off", os.environ["BENTOML_DO_NOT_TRACK"])

    def _serving(self, ctx: bentoml.Context, name: str | None) -> ServedModel:
        """The model version `name` asks for (None: the default), named in the answer's X-CapsNet-Model header."""
        model = self.core.model_named(name)
        ctx.response.headers[MODEL_HEADER] = model.tag
        return model

    async def infer_packed(self, images: np.ndarray, name: str, ctx: bentoml.Context) -> np.ndarray:
        """What the low-level infer APIs answer: [N, 1, S, S] -> [N, W], the model's outputs packed per image."""
        with client_errors():
            model = self._serving(ctx, name)
            return model.runtime.pack(await self.core.predict(images, model))

    @bentoml.on_startup
    async def start_protocols(self) -> None:
        """The Open Inference Protocol over gRPC and REST, each on its own port."""
        self.protocols = await ProtocolServers.start(ServedOipModels(self.core), self._ready, settings, admission)

    @bentoml.on_shutdown
    async def stop_protocols(self) -> None:
        if self.protocols is not None:
            await self.protocols.stop()

    def _ready(self) -> bool:
        """Ready = on the GPU if one is required, and the protocol servers up."""
        return self.core.gpu_ok() and self.protocols is not None

    async def __is_ready__(self) -> bool:  # BentoML's /readyz
        return self._ready()

    async def _answer(self, batch: np.ndarray, model: ServedModel, reconstructions: bool) -> list[Prediction]:
        with client_errors():
            outputs = await self.core.predict(batch, model)
            return self.core.predictions(outputs, model, reconstructions)

    @bentoml.api
    async def classify(self, ctx: bentoml.Context, images: Images, model: ModelName = NAMES[0],
                       reconstructions: WithReconstructions = False) -> Predictions:
        """Classify a batch of images given as arrays: [N, S, S] or [N, 1, S, S], floats in [0, 1]
        (MNIST pixels divided by 255), S the model's input size (28 for digits, 36 for overlapping
        pairs). Returns, per image, the label, the 10 capsule lengths, the 10 pose vectors, and the
        objects found (1 for a digit model, 2 for a pair model: the longest capsules)."""
        with client_errors():
            served = self._serving(ctx, model)
            batch = self.core.validate(images, served)
        return await self._answer(batch, served, reconstructions)

    @bentoml.api
    async def classify_image(self, ctx: bentoml.Context, images: ImageFiles, model: ModelName = NAMES[0],
                             reconstructions: WithReconstructions = False) -> Predictions:
        """Classify uploaded PNG or JPEG files of any size (multipart form field `images`, one or
        more files; optional form fields `model`, `reconstructions`). Each is made MNIST-like first:
        grayscale, inverted if dark-on-light, the paper taken to 0 and the ink to about 1 (uneven
        light, tinted paper, JPEG noise), cropped to the ink, scaled to fit the model's input less a
        4-pixel margin (20x20 in 28x28), centred by centre of mass."""
        with client_errors():
            served = self._serving(ctx, model)
            batch = self.core.decode_uploads([Path(p).read_bytes() for p in images], served)
        return await self._answer(batch, served, reconstructions)

    # The explorer's APIs (serving/handlers/explorer.py; the page at /explorer/ calls these). Plain functions:
    # BentoML runs them in its thread pool, outside the batcher (large, interactive answers).

    @bentoml.api
    def explain(self, ctx: bentoml.Context, images: Images, model: ModelName = NAMES[0]) -> Explanations:
        """What classify returns for each image, plus the reconstruction from the longest capsule and
        the part-whole map: for each class capsule, how much of every primary capsule (part) was
        routed to it, by capsule type and grid cell, with each cell's receptive field in the input.
        Needs a model exported with the explorer's graphs (capsnet export's default)."""
        with client_errors():
            return explorer.explain(self.core, self._serving(ctx, model), images)

    @bentoml.api
    def explain_image(self, ctx: bentoml.Context, images: ImageFiles, model: ModelName = NAMES[0]) -> Explanations:
        """explain for uploaded PNG or JPEG files (prepared as classify_image prepares them); each
        answer's `input` is the image the model saw."""
        with client_errors():
            served = self._serving(ctx, model)
            batch = self.core.decode_uploads([Path(p).read_bytes() for p in images], served)
            return explorer.explain(self.core, served, batch)

    @bentoml.api
    def reconstruct(self, ctx: bentoml.Context, poses: Poses, label: Label = None,  # type: ignore[assignment]  # None: left out
                    model: ModelName = NAMES[0]) -> Reconstructions:
        """Redraw capsule poses [N][classes][pose dims] with the decoder, masked to `label`'s capsule
        (default: each set's longest). Poses as explain returns them, edited or not."""
        with client_errors():
            return explorer.reconstruct(self.core, self._serving(ctx, model), poses, label)

    @bentoml.api
    def perturb(self, ctx: bentoml.Context, image: OneImage, label: Label = None,  # type: ignore[assignment]  # None: left out
                model: ModelName = NAMES[0]) -> Perturbation:
        """The paper's Fig. 4 for one image: each dimension of the `label` capsule's pose (default:
        the longest) moved from -0.25 to +0.25 in steps of 0.05, one at a time, each redrawn."""
        with client_errors():
            return explorer.perturb(self._serving(ctx, model), image, label)

    @bentoml.api
    def equivariance(self, ctx: bentoml.Context, image: OneImage,
                     max_shift: Shift = 3, max_rotation: Rotation = 30.0,
                     model: ModelName = NAMES[0]) -> Equivariance:
        """One image shifted along x and y by up to max_shift pixels and rotated by up to
        max_rotation degrees: for each view the predicted class, the winning length and the pose of
        the original class's capsule (the pose should move with the image, the class should not)."""
        with client_errors():
            return explorer.equivariance(self._serving(ctx, model), image, max_shift, max_rotation)

    @bentoml.api(route="/metadata")  # read with GET (serving/bento/middleware.py: ReadOnlyRoutes)
    async def metadata(self) -> dict[str, Any]:
        """The served models (each with its input size and task; the default one's details at the top
        level), the ONNX Runtime provider in use, batching settings and statistics, versions."""
        return {**self.core.metadata({"bentoml": bentoml.__version__}), "admission": admission.snapshot()}


# The per-model store references and infer APIs join the declared ones as class attributes.
CapsNetService = bentoml.service(name="capsnet", workers=settings.workers, traffic={"timeout": 60},
                                 logging={"access": {"enabled": settings.access_log}})(
    type("CapsNetService", (_CapsNetService,), per_model_attributes()))
http_app.install(CapsNetService, settings.max_request_bytes,
                 uploads={"/classify_image": "images", "/explain_image": "images"}, admission=admission,
                 # the APIs that feed a batcher: the body names the model, or the route is the model's own
                 gated={"/classify": None, "/classify_image": None,
                        **{f"/{infer_api_name(name)}": name for name in NAMES}},
                 default_model=NAMES[0], is_served=lambda name: name in SERVED_NOW)
# The explorer page (serving/explorer_page/: static files, no build step) at /explorer/.
CapsNetService.mount_asgi_app(http_app.explorer_page(), path="/explorer", name="explorer")
