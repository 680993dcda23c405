"""The BentoML service behind `bentoml serve` (entry: `serving.service:CapsNetService`), and the
composition root: the only module that reads the environment and the model store at import, and
wires the layers (docs/development.md#how-serving-is-built):

    serving/engine/    one model version and what runs it: runtime, batcher, statistics, admission,
                       versions, policies and the repository (no HTTP, gRPC or BentoML)
    serving/handlers/  what a request means, transport-neutral: classify, the explorer, /metadata
    serving/oip/       the Open Inference Protocol v2: one data plane, REST and gRPC front ends
    serving/bento/     everything that knows BentoML: the store, API types, middleware, admission gate

One `bentoml serve` serves several registered models, each in one or more versions (version
policies; with CAPSNET_MODEL_CONTROL=explicit, loaded and unloaded while serving). Every protocol's
requests share each version's batcher, statistics and admission. Every BentoML answer about a model
names the version that answered in the X-CapsNet-Model header. Settings: CAPSNET_* variables
(serving/settings.py). No torch, no training code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from serving.bento import prometheus, store
from serving.bento.admission_gate import AdmissionGate
from serving.bento.answers import answered
from serving.bento.api_types import ApiTypes, Explanations, Predictions, Rotation, Shift, per_model_attributes
from serving.bento.api_types import infer_api_name as _infer_api_name
from serving.bento.middleware import explorer_page, install
from serving.engine.admission import Admission
from serving.engine.policies import parse_policies
from serving.engine.repository import ModelRepository
from serving.handlers import explorer
from serving.handlers.classify import Classifier, version_opener
from serving.handlers.describe import metadata_document
from serving.handlers.explorer import Equivariance, Perturbation, Reconstructions
from serving.oip.dataplane import DataPlane
from serving.oip.listeners import ProtocolServers
from serving.settings import ServingSettings

# `bentoml serve` sends BentoML usage telemetry unless BENTOML_DO_NOT_TRACK is true. Our server does
# not by default, under make or not (it reads the variable when it reports, after this import); an
# operator who wants to send it sets BENTOML_DO_NOT_TRACK=False. The start-up log says which.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

# BentoML sets its own logger to INFO and the root to WARNING: without this, our INFO lines (the
# provider in use, the protocol ports) would never reach `bentoml serve`'s output.
logging.getLogger("serving").setLevel(logging.getLogger("bentoml").getEffectiveLevel())

# The wiring, once per server process.
settings = ServingSettings.from_env_or_exit()
selection = store.select_at_startup(settings, Path(__file__).resolve().parents[1])
# One admission and one repository per process, shared by the BentoML APIs, OIP REST and gRPC; the
# repository opens its versions when the service starts (below), and loads others later.
admission = Admission(settings.max_queue, settings.retry_after_s, on_refused=prometheus.count_refused)
repository = ModelRepository(lambda: store.list_store(tuple(selection.wanted)),
                             version_opener(store.path_and_metadata, settings, prometheus.STATISTICS_HOOKS),
                             parse_policies(settings.version_policy), control=settings.model_control == "explicit")
types = ApiTypes.of(selection, settings.max_batch_size)
Images, ImageFiles, ModelName, WithReconstructions = types.images, types.image_files, types.model_name, \
    types.with_reconstructions
OneImage, Poses, Label = types.one_image, types.poses, types.label
DEFAULT = selection.default_name


def infer_api_name(name: str) -> str:
    """`infer` for the default model, `infer_<model name>` for the others."""
    return _infer_api_name(name, DEFAULT)


class _CapsNetService:
    """Classify handwritten digits, and pairs of overlapping digits, with Capsule Networks (Sabour et
    al. 2017), served from ONNX."""

    def __init__(self) -> None:
        if not repository.models():
            repository.start(selection.wanted)
        self.classifier = Classifier(repository, settings, admission)
        self.protocols: ProtocolServers | None = None
        tracking = os.environ["BENTOML_DO_NOT_TRACK"].strip().lower() != "true"
        log = logging.getLogger(__name__)
        log.info("default model %s; version policy %s; model control %s", self.classifier.default_name,
                 settings.version_policy, settings.model_control)
        log.info("BentoML usage telemetry %s (BENTOML_DO_NOT_TRACK=%s)",
                 "on" if tracking else "off", os.environ["BENTOML_DO_NOT_TRACK"])

    async def infer_packed(self, images: np.ndarray, name: str, ctx: bentoml.Context) -> Any:
        """What the low-level infer APIs answer: [N, 1, S, S] -> [N, W], the model's outputs packed per image."""
        return await answered(ctx, self.classifier.infer_packed(images, name))

    @bentoml.on_startup
    async def start_protocols(self) -> None:
        """The Open Inference Protocol over gRPC and REST, each on its own port."""
        self.protocols = await ProtocolServers.start(DataPlane(self.classifier, self._ready), settings)

    @bentoml.on_shutdown
    async def stop_protocols(self) -> None:
        if self.protocols is not None:
            await self.protocols.stop()

    def _ready(self) -> bool:
        """Ready = a model serves (on the GPU if one is required: Classifier.ready) and the protocol
        servers are up. One answer for /readyz, OIP REST and gRPC ServerReady."""
        return self.classifier.ready() and self.protocols is not None

    async def __is_ready__(self) -> bool:  # BentoML's /readyz
        return self._ready()

    @bentoml.api
    async def classify(self, ctx: bentoml.Context, images: Images, model: ModelName = DEFAULT,
                       reconstructions: WithReconstructions = False) -> Predictions:
        """Classify a batch of images given as arrays: [N, S, S] or [N, 1, S, S], floats in [0, 1]
        (MNIST pixels divided by 255), S the model's input size (28 for digits, 36 for overlapping
        pairs). Returns, per image, the label, the 10 capsule lengths, the 10 pose vectors, and the
        objects found (1 for a digit model, 2 for a pair model: the longest capsules)."""
        return await answered(ctx, self.classifier.classify(images, model, reconstructions))

    @bentoml.api
    async def classify_image(self, ctx: bentoml.Context, images: ImageFiles, model: ModelName = DEFAULT,
                             reconstructions: WithReconstructions = False) -> Predictions:
        """Classify uploaded PNG or JPEG files of any size (multipart form field `images`, one or
        more files; optional form fields `model`, `reconstructions`). Each is made MNIST-like first:
        grayscale, inverted if dark-on-light, the paper taken to 0 and the ink to about 1 (uneven
        light, tinted paper, JPEG noise), cropped to the ink, scaled to fit the model's input less a
        4-pixel margin (20x20 in 28x28), centred by centre of mass."""
        files = [Path(p).read_bytes() for p in images]
        return await answered(ctx, self.classifier.classify_uploads(files, model, reconstructions))

    # The explorer's APIs (serving/handlers/explorer.py; the page at /explorer/ calls these). They run
    # in a worker thread, outside the batcher (large, interactive answers).

    @bentoml.api
    async def explain(self, ctx: bentoml.Context, images: Images, model: ModelName = DEFAULT) -> Explanations:
        """What classify returns for each image, plus the reconstruction from the longest capsule and
        the part-whole map: for each class capsule, how much of every primary capsule (part) was
        routed to it, by capsule type and grid cell, with each cell's receptive field in the input.
        Needs a model exported with the explorer's graphs (capsnet export's default)."""
        return await answered(ctx, asyncio.to_thread(explorer.explain, self.classifier, model, images))

    @bentoml.api
    async def explain_image(self, ctx: bentoml.Context, images: ImageFiles, model: ModelName = DEFAULT
                            ) -> Explanations:
        """explain for uploaded PNG or JPEG files (prepared as classify_image prepares them); each
        answer's `input` is the image the model saw."""
        files = [Path(p).read_bytes() for p in images]
        return await answered(ctx, asyncio.to_thread(explorer.explain_uploads, self.classifier, model, files))

    @bentoml.api
    async def reconstruct(self, ctx: bentoml.Context, poses: Poses, label: Label = None,  # type: ignore[assignment]  # None: left out
                          model: ModelName = DEFAULT) -> Reconstructions:
        """Redraw capsule poses [N][classes][pose dims] with the decoder, masked to `label`'s capsule
        (default: each set's longest). Poses as explain returns them, edited or not."""
        return await answered(ctx, asyncio.to_thread(explorer.reconstruct, self.classifier, model, poses, label))

    @bentoml.api
    async def perturb(self, ctx: bentoml.Context, image: OneImage, label: Label = None,  # type: ignore[assignment]  # None: left out
                      model: ModelName = DEFAULT) -> Perturbation:
        """The paper's Fig. 4 for one image: each dimension of the `label` capsule's pose (default:
        the longest) moved from -0.25 to +0.25 in steps of 0.05, one at a time, each redrawn."""
        return await answered(ctx, asyncio.to_thread(explorer.perturb, self.classifier, model, image, label))

    @bentoml.api
    async def equivariance(self, ctx: bentoml.Context, image: OneImage,
                           max_shift: Shift = 3, max_rotation: Rotation = 30.0,
                           model: ModelName = DEFAULT) -> Equivariance:
        """One image shifted along x and y by up to max_shift pixels and rotated by up to
        max_rotation degrees: for each view the predicted class, the winning length and the pose of
        the original class's capsule (the pose should move with the image, the class should not)."""
        return await answered(ctx, asyncio.to_thread(explorer.equivariance, self.classifier, model, image,
                                                     max_shift, max_rotation))

    @bentoml.api(route="/metadata")  # read with GET (serving/bento/middleware.py: ReadOnlyRoutes)
    async def metadata(self) -> dict[str, Any]:
        """The served models (each with its input size and task; the default one's details at the top
        level), the ONNX Runtime provider in use, batching settings and statistics, versions."""
        return metadata_document(self.classifier, {"bentoml": bentoml.__version__})


# The per-model store references and infer APIs join the declared ones as class attributes.
CapsNetService = bentoml.service(name="capsnet", workers=settings.workers, traffic={"timeout": 60},
                                 logging={"access": {"enabled": settings.access_log}})(
    type("CapsNetService", (_CapsNetService,), per_model_attributes(selection, settings.max_batch_size)))
install(CapsNetService, settings.max_request_bytes,
        uploads={"/classify_image": "images", "/explain_image": "images"},
        # every API that runs a model, the explorer's included (they answer 1-3 MB each): the body names
        # the model, or the route is the model's own
        gate=functools.partial(AdmissionGate, admission=admission, repository=repository,
                               routes={**dict.fromkeys(("/classify", "/classify_image", "/explain", "/explain_image",
                                                        "/reconstruct", "/perturb", "/equivariance")),
                                       **{f"/{infer_api_name(name)}": name for name in selection.names}},
                               max_request_bytes=settings.max_request_bytes))
# The explorer page (serving/explorer_page/: static files, no build step) at /explorer/.
CapsNetService.mount_asgi_app(explorer_page(), path="/explorer", name="explorer")
