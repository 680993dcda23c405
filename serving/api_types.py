"""The types the BentoML APIs declare, derived from the served models (serving/served_models.py): what
clients may send, with examples, as the OpenAPI document states it (validation itself lives in
serving/validation.py), and the per-model batchable `infer` APIs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from serving.core import Prediction
from serving.explorer import MAX_ROTATION, MAX_SHIFT, Explanation
from serving.served_models import MODELS, NAMES, settings
from serving.validation import (
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
Explanations = Annotated[list[Explanation], ContentType("application/json")]

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
Shift = Annotated[int, Field(ge=0, le=MAX_SHIFT, strict=True, examples=[3])]
Rotation = Annotated[float, Field(ge=0, le=MAX_ROTATION, strict=True, examples=[30])]


def infer_api_name(index: int) -> str:
    """`infer` for the default model (MODELS[0]), `infer_<model name>` for the others."""
    return "infer" if index == 0 else "infer_" + re.sub(r"[^a-z0-9]+", "_", MODELS[index].tag.name.lower())


def batched_infer_api(index: int) -> Any:
    """The batchable API of MODELS[index]: validated images -> one row of packed outputs per image."""
    stored = MODELS[index]
    config, size = stored.info.metadata["model_config"], stored.info.metadata["model_config"]["image_size"]
    k, d = len(stored.info.metadata["class_names"]), config["digit_dim"]
    width = k * (1 + d) + (2 * size * size if "reconstructions_top2" in stored.info.metadata["outputs"] else 0)

    def validated(images: np.ndarray) -> np.ndarray:
        return validate_images(images, settings.max_batch_size, size)  # InputError is a ValueError: a 400

    def infer(self: Any, images: np.ndarray) -> np.ndarray:
        return self.core.infer_packed(images, self.core.models[index])

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


def per_model_attributes() -> dict[str, Any]:
    """The service's class attributes that exist once per served model: its store reference
    (model_ref_<i>) and its batchable infer API."""
    return {**{f"model_ref_{i}": bentoml.models.BentoModel(str(m.tag)) for i, m in enumerate(MODELS)},
            **{infer_api_name(i): batched_infer_api(i) for i in range(len(MODELS))}}
