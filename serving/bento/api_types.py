"""The types the BentoML APIs declare, derived from the models served at start-up (serving/bento/store.py):
what clients may send, with examples, as the OpenAPI document states it (validation itself lives in
serving/handlers/validation.py, and serving/handlers/classify.py finds the model, so models loaded later
are served too), and the per-model low-level `infer` APIs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from serving.bento.store import MODELS, NAMES, settings
from serving.handlers.classify import Prediction
from serving.handlers.explorer import MAX_ROTATION, MAX_SHIFT, Explanation
from serving.handlers.validation import (
    image_json_schema,
    images_json_schema,
    no_booleans,
    poses_json_schema,
    validate_images,
)

SIZES = tuple(sorted({m.info.metadata["model_config"]["image_size"] for m in MODELS}))
_side = SIZES[0]
_stroke = [[1.0 if abs(x - _side // 2) <= 1 and 4 <= y < _side - 4 else 0.0 for x in range(_side)]
           for y in range(_side)]  # a vertical bar, a "1": the OpenAPI document's example image
Images = Annotated[np.ndarray, BeforeValidator(no_booleans),
                   WithJsonSchema({**images_json_schema(settings.max_batch_size, SIZES), "examples": [[_stroke]]})]
ImageFiles = Annotated[list[Path], Field(min_length=1, max_length=settings.max_batch_size)]
# Not an enum: models can be loaded and unloaded while serving (CAPSNET_MODEL_CONTROL=explicit);
# an unknown name is a 404 that lists the served ones.
ModelName = Annotated[str, Field(description=f"which served model answers: a name (its preferred version) or "
                                             f"NAME:VERSION; default {NAMES[0]}; served at start-up: "
                                             f"{', '.join(NAMES)}", examples=NAMES)]
RECONSTRUCTING = [m.tag.name for m in MODELS if "reconstructions_top2" in m.info.metadata["outputs"]]
# strict: 0 or "yes" is a client mistake, not False/True; only `false` is valid when no model can redraw
WithReconstructions = Annotated[bool, Field(
    strict=True, description="also return each found object's reconstruction; models that can: "
                             + (", ".join(RECONSTRUCTING) or "none (export with --with-top2-reconstructions)"),
    json_schema_extra=None if RECONSTRUCTING else {"enum": [False]})]

# Declaring the media type spares BentoML rebuilding the response's JSON schema for every response
# just to find out it is JSON (IOMixin.mime_type; ~10 % of server CPU under load). Same schema in /docs.
Predictions = Annotated[list[Prediction], ContentType("application/json")]
Explanations = Annotated[list[Explanation], ContentType("application/json")]

# The explorer's inputs (serving/handlers/explorer.py), with examples for the OpenAPI document.
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
Shift = Annotated[int, Field(ge=0, le=MAX_SHIFT, strict=True, examples=[3])]
Rotation = Annotated[float, Field(ge=0, le=MAX_ROTATION, strict=True, examples=[30])]


def infer_api_name(name: str) -> str:
    """`infer` for the default model (NAMES[0]), `infer_<model name>` for the others."""
    return "infer" if name == NAMES[0] else "infer_" + re.sub(r"[^a-z0-9]+", "_", name.lower())


def infer_api(name: str) -> Any:
    """The low-level API of model `name` (its preferred version): validated images -> one row of packed
    outputs per image, through the model's batcher like every other request."""
    stored = next(m for m in MODELS if m.tag.name == name)
    config, size = stored.info.metadata["model_config"], stored.info.metadata["model_config"]["image_size"]
    k, d = len(stored.info.metadata["class_names"]), config["digit_dim"]
    width = k * (1 + d) + (2 * size * size if "reconstructions_top2" in stored.info.metadata["outputs"] else 0)

    def validated(images: np.ndarray) -> np.ndarray:
        return validate_images(images, settings.max_batch_size, size)  # InputError is a ValueError: a 400

    async def infer(self: Any, ctx: bentoml.Context, images: np.ndarray) -> np.ndarray:
        return await self.infer_packed(images, name, ctx)

    infer.__name__ = infer.__qualname__ = infer_api_name(name)
    infer.__doc__ = (f"Low-level endpoint of {name}: images [N, 1, {size}, {size}] float32 in [0, 1] -> "
                     f"[N, {width}] (capsule lengths, the flattened poses, then any reconstructions). Batched "
                     "with every other request to the model, over every protocol; each request is validated on "
                     "its own first, so a bad request never fails its batch-mates.")
    infer.__annotations__ = {
        "ctx": bentoml.Context,
        "images": Annotated[np.ndarray, WithJsonSchema(images_json_schema(settings.max_batch_size, (size,))),
                            AfterValidator(validated)],
        "return": Annotated[np.ndarray, WithJsonSchema({
            "type": "array", "description": f"per image, {k} capsule lengths, the {k}x{d} poses flattened, "
                                            "then any reconstructions",
            "items": {"type": "array", "items": {"type": "number"}, "minItems": width, "maxItems": width}})],
    }
    return bentoml.api(infer)


def per_model_attributes() -> dict[str, Any]:
    """The service's class attributes that exist once per model served at start-up: each version's store
    reference (model_ref_<i>: what `bentoml build` packs into a Bento) and each model's infer API."""
    return {**{f"model_ref_{i}": bentoml.models.BentoModel(str(m.tag)) for i, m in enumerate(MODELS)},
            **{infer_api_name(name): infer_api(name) for name in NAMES}}
