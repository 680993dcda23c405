"""The BentoML shell behind `bentoml serve` (entry: `serving.service:CapsNetService`): declarations that
delegate to serving/core.py (requests), serving/explorer.py (the explorer's APIs) and
serving/protocols.py (the Open Inference Protocol over gRPC and REST).

One `bentoml serve` serves several registered models (serving/served_models.py), each with one
`batchable=True` API (`infer`, `infer_<name>`: serving/api_types.py) whose adaptive batcher merges
concurrent calls into one ONNX Runtime run. classify, classify_image and the protocols' infer validate
per request, then hand the array to that batcher in-process (serving/batcher.py), so every protocol
shares batches. Every protocol's requests to a model pass one admission (serving/admission.py): a full
model answers 503 + Retry-After / UNAVAILABLE at once. Settings: CAPSNET_* variables
(serving/settings.py). No torch, no training code.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, NotFound, ServiceUnavailable, UnprocessableEntity

from serving import explorer, http_app, metrics
from serving.admission import PAST_BUDGET, Admission, Overloaded
from serving.api_types import (
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
from serving.batcher import Batchers
from serving.core import Prediction, ServedModel, ServingCore, UnknownModelError
from serving.explorer import Equivariance, Perturbation, Reconstructions
from serving.oip import OipModel
from serving.protocols import ProtocolServers
from serving.providers import CUDA
from serving.served_models import MODELS, NAMES, settings
from serving.validation import CapabilityError, InputError

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


class _CapsNetService:
    """Classify handwritten digits, and pairs of overlapping digits, with Capsule Networks (Sabour et
    al. 2017), served from ONNX."""

    def __init__(self) -> None:
        self.core = ServingCore.load([(str(m.tag), getattr(self, f"model_ref_{i}").path, m.info.metadata)
                                      for i, m in enumerate(MODELS)], settings)
        self.protocols: ProtocolServers | None = None
        self.batchers = Batchers(self, settings.in_process_batcher)  # serving/batcher.py says why
        tracking = os.environ["BENTOML_DO_NOT_TRACK"].strip().lower() != "true"
        logging.getLogger(__name__).info("BentoML usage telemetry %s (BENTOML_DO_NOT_TRACK=%s)",
                                         "on" if tracking else "off", os.environ["BENTOML_DO_NOT_TRACK"])

    async def _predict(self, images: np.ndarray, model: ServedModel) -> dict[str, np.ndarray]:
        """Validated [N, 1, S, S] for `model` -> its unpacked outputs, via its infer API's batcher.
        Overloaded (counted) when the batcher shed the request after the latency budget."""
        api = infer_api_name(self.core.models.index(model))
        try:
            packed = await self.batchers.get(api)(images)
        except ServiceUnavailable:  # BentoML's batcher: "process is overloaded"
            raise admission.refuse(model.name, PAST_BUDGET) from None
        return self.core.unpack(packed, model)

    @bentoml.on_startup
    async def start_protocols(self) -> None:
        """The Open Inference Protocol over gRPC and REST, each on its own port."""
        models = {m.name: OipModel(m.version, functools.partial(self._predict, model=m), m.image_size, m.output_dims,
                                   on_gpu=m.runtime.provider == CUDA) for m in self.core.models}
        self.protocols = await ProtocolServers.start(models, self._ready, settings, admission)

    @bentoml.on_shutdown
    async def stop_protocols(self) -> None:
        if self.protocols is not None:
            await self.protocols.stop()

    def _ready(self) -> bool:
        """Ready = on the GPU if one is required, the protocol servers up, and, for the in-process batcher
        only, its lookup answered for every model (BentoML wires the app after the startup hooks)."""
        apis = [infer_api_name(i) for i in range(len(MODELS))]
        return self.core.gpu_ok() and self.protocols is not None and self.batchers.ready(apis)

    async def __is_ready__(self) -> bool:  # BentoML's /readyz
        return self._ready()

    async def _answer(self, batch: np.ndarray, model: ServedModel, reconstructions: bool) -> list[Prediction]:
        with client_errors():
            outputs = await self._predict(batch, model)
            return self.core.predictions(outputs, model, reconstructions)

    @bentoml.api
    async def classify(self, images: Images, model: ModelName = NAMES[0],
                       reconstructions: WithReconstructions = False) -> Predictions:
        """Classify a batch of images given as arrays: [N, S, S] or [N, 1, S, S], floats in [0, 1]
        (MNIST pixels divided by 255), S the model's input size (28 for digits, 36 for overlapping
        pairs). Returns, per image, the label, the 10 capsule lengths, the 10 pose vectors, and the
        objects found (1 for a digit model, 2 for a pair model: the longest capsules)."""
        with client_errors():
            served = self.core.model_named(model)
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
        with client_errors():
            served = self.core.model_named(model)
            batch = self.core.decode_uploads([Path(p).read_bytes() for p in images], served)
        return await self._answer(batch, served, reconstructions)

    # The explorer's APIs (serving/explorer.py; the page at /explorer/ calls these). Plain functions:
    # BentoML runs them in its thread pool, outside the batcher (large, interactive answers).

    @bentoml.api
    def explain(self, images: Images, model: ModelName = NAMES[0]) -> Explanations:
        """What classify returns for each image, plus the reconstruction from the longest capsule and
        the part-whole map: for each class capsule, how much of every primary capsule (part) was
        routed to it, by capsule type and grid cell, with each cell's receptive field in the input.
        Needs a model exported with the explorer's graphs (capsnet export's default)."""
        with client_errors():
            return explorer.explain(self.core, self.core.model_named(model), images)

    @bentoml.api
    def explain_image(self, images: ImageFiles, model: ModelName = NAMES[0]) -> Explanations:
        """explain for uploaded PNG or JPEG files (prepared as classify_image prepares them); each
        answer's `input` is the image the model saw."""
        with client_errors():
            served = self.core.model_named(model)
            batch = self.core.decode_uploads([Path(p).read_bytes() for p in images], served)
            return explorer.explain(self.core, served, batch)

    @bentoml.api
    def reconstruct(self, poses: Poses, label: Label = None,  # type: ignore[assignment]  # None: left out
                    model: ModelName = NAMES[0]) -> Reconstructions:
        """Redraw capsule poses [N][classes][pose dims] with the decoder, masked to `label`'s capsule
        (default: each set's longest). Poses as explain returns them, edited or not."""
        with client_errors():
            return explorer.reconstruct(self.core, self.core.model_named(model), poses, label)

    @bentoml.api
    def perturb(self, image: OneImage, label: Label = None,  # type: ignore[assignment]  # None: left out
                model: ModelName = NAMES[0]) -> Perturbation:
        """The paper's Fig. 4 for one image: each dimension of the `label` capsule's pose (default:
        the longest) moved from -0.25 to +0.25 in steps of 0.05, one at a time, each redrawn."""
        with client_errors():
            return explorer.perturb(self.core.model_named(model), image, label)

    @bentoml.api
    def equivariance(self, image: OneImage,
                     max_shift: Shift = 3, max_rotation: Rotation = 30.0,
                     model: ModelName = NAMES[0]) -> Equivariance:
        """One image shifted along x and y by up to max_shift pixels and rotated by up to
        max_rotation degrees: for each view the predicted class, the winning length and the pose of
        the original class's capsule (the pose should move with the image, the class should not)."""
        with client_errors():
            return explorer.equivariance(self.core.model_named(model), image, max_shift, max_rotation)

    @bentoml.api(route="/metadata")  # read with GET (serving/http_app.py: ReadOnlyRoutes)
    async def metadata(self) -> dict[str, Any]:
        """The served models (each with its input size and task; the default one's details at the top
        level), the ONNX Runtime provider in use, batching settings and statistics, versions."""
        return {**self.core.metadata(self.batchers.in_process("infer"), {"bentoml": bentoml.__version__}),
                "admission": admission.snapshot()}


# The per-model store references and infer APIs join the declared ones as class attributes.
# runner_connection (the fallback path only, serving/batcher.py): BentoML's self.to_async client replaces
# its HTTP session every 100 requests and closes the old one under requests in flight (BentoML #5540).
CapsNetService = bentoml.service(name="capsnet", workers=settings.workers, traffic={"timeout": 60},
                                 logging={"access": {"enabled": settings.access_log}},
                                 runner_connection={"max_requests": 1_000_000_000, "max_age": 1e9})(
    type("CapsNetService", (_CapsNetService,), per_model_attributes()))
http_app.install(CapsNetService, settings.max_request_bytes,
                 uploads={"/classify_image": "images", "/explain_image": "images"}, admission=admission,
                 # the APIs that feed a batcher: the body names the model, or the route is the model's own
                 gated={"/classify": None, "/classify_image": None,
                        **{f"/{infer_api_name(i)}": name for i, name in enumerate(NAMES)}},
                 served=tuple(NAMES))
# The explorer page (serving/explorer/: static files, no build step) at /explorer/.
CapsNetService.mount_asgi_app(http_app.explorer_page(), path="/explorer", name="explorer")
