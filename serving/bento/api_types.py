"""The types the BentoML APIs declare, built from the models served at start-up (serving/bento/store.py:
a Selection): what clients may send, with examples, as the OpenAPI document states it (validation
itself lives in serving/handlers/, and the classifier finds the model, so models loaded later are
served too), and the per-model low-level `infer` APIs. serving/service.py builds them once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from serving.bento.openapi import image_json_schema, images_json_schema, poses_json_schema
from serving.bento.store import Selection
from serving.handlers.classify import Prediction
from serving.handlers.explorer import MAX_ROTATION, MAX_SHIFT, Explanation
from serving.handlers.validation import no_booleans, validate_images

# Declaring the media type spares BentoML rebuilding the response's JSON schema for every response
# just to find out it is JSON (IOMixin.mime_type; ~10 % of server CPU under load). Same schema in /docs.
Predictions = Annotated[list[Prediction], ContentType("application/json")]
Explanations = Annotated[list[Explanation], ContentType("application/json")]
Shift = Annotated[int, Field(ge=0, le=MAX_SHIFT, strict=True, examples=[3])]
Rotation = Annotated[float, Field(ge=0, le=MAX_ROTATION, strict=True, examples=[30])]


@dataclass(frozen=True)
class ApiTypes:
    """The request types that depend on the served models: image sides, class counts, pose sizes."""

    images: Any
    image_files: Any
    model_name: Any
    with_reconstructions: Any
    one_image: Any
    poses: Any
    label: Any

    @classmethod
    def of(cls, selection: Selection, max_batch_size: int) -> ApiTypes:
        facts = list(selection.facts.values())
        names = selection.names
        sizes = tuple(sorted({f.image_size for f in facts}))
        side = sizes[0]
        stroke = [[1.0 if abs(x - side // 2) <= 1 and 4 <= y < side - 4 else 0.0 for x in range(side)]
                  for y in range(side)]  # a vertical bar, a "1": the OpenAPI document's example image
        reconstructing = [name for name, f in selection.facts.items() if f.reconstructs]
        pose_shapes = tuple(sorted({(len(f.class_names), f.pose_dim) for f in facts}))
        k, d = pose_shapes[0]
        pose = [[0.0] * d for _ in range(k)]
        pose[1] = [0.05] * d
        classes = max(len(f.class_names) for f in facts)
        return cls(
            images=Annotated[np.ndarray, BeforeValidator(no_booleans), WithJsonSchema(
                {**images_json_schema(max_batch_size, sizes), "examples": [[stroke]]})],
            image_files=Annotated[list[Path], Field(min_length=1, max_length=max_batch_size)],
            # Not an enum: models can be loaded and unloaded while serving (CAPSNET_MODEL_CONTROL=explicit);
            # an unknown name is a 404 that lists the served ones.
            model_name=Annotated[str, Field(
                description=f"which served model answers: a name (its preferred version) or NAME:VERSION; "
                            f"default {names[0]}; served at start-up: {', '.join(names)}", examples=names)],
            # strict: 0 or "yes" is a client mistake, not False/True; only `false` is valid when no model can redraw
            with_reconstructions=Annotated[bool, Field(
                strict=True, description="also return each found object's reconstruction; models that can: "
                + (", ".join(reconstructing) or "none (export with --with-top2-reconstructions)"),
                json_schema_extra=None if reconstructing else {"enum": [False]})],
            one_image=Annotated[np.ndarray, BeforeValidator(no_booleans),
                                WithJsonSchema({**image_json_schema(sizes), "examples": [stroke]})],
            poses=Annotated[np.ndarray, BeforeValidator(no_booleans), WithJsonSchema(
                {**poses_json_schema(max_batch_size, pose_shapes), "examples": [[pose]]})],
            # Not `int | None`: the document would say integer (BentoML flattens the anyOf) yet accept null.
            # Leave the field out for the default; strict: "3" or true is a client mistake, not 3 or 1.
            label=Annotated[int, Field(ge=0, le=classes - 1, strict=True, examples=[1],
                                       description="the class capsule to draw (leave out: the longest)")],
        )


def infer_api_name(name: str, default_name: str) -> str:
    """`infer` for the default model, `infer_<model name>` for the others."""
    return "infer" if name == default_name else "infer_" + re.sub(r"[^a-z0-9]+", "_", name.lower())


def infer_api(name: str, selection: Selection, max_batch_size: int) -> Any:
    """The low-level API of model `name` (its preferred version): validated images -> one row of packed
    outputs per image, through the model's batcher like every other request. The service answers it
    with `infer_packed`."""
    facts = selection.facts[name]
    size, k, d, width = facts.image_size, len(facts.class_names), facts.pose_dim, facts.packed_width

    def validated(images: np.ndarray) -> np.ndarray:
        return validate_images(images, max_batch_size, size)  # InputError is a ValueError: a 400

    async def infer(self: Any, ctx: bentoml.Context, images: np.ndarray) -> np.ndarray:
        return await self.infer_packed(images, name, ctx)

    infer.__name__ = infer.__qualname__ = infer_api_name(name, selection.default_name)
    infer.__doc__ = (f"Low-level endpoint of {name}: images [N, 1, {size}, {size}] float32 in [0, 1] -> "
                     f"[N, {width}] (capsule lengths, the flattened poses, then any reconstructions). Batched "
                     "with every other request to the model, over every protocol; each request is validated on "
                     "its own first, so a bad request never fails its batch-mates.")
    infer.__annotations__ = {
        "ctx": bentoml.Context,
        "images": Annotated[np.ndarray, WithJsonSchema(images_json_schema(max_batch_size, (size,))),
                            AfterValidator(validated)],
        "return": Annotated[np.ndarray, WithJsonSchema({
            "type": "array", "description": f"per image, {k} capsule lengths, the {k}x{d} poses flattened, "
                                            "then any reconstructions",
            "items": {"type": "array", "items": {"type": "number"}, "minItems": width, "maxItems": width}})],
    }
    return bentoml.api(infer)


def per_model_attributes(selection: Selection, max_batch_size: int) -> dict[str, Any]:
    """The service's class attributes that exist once per model served at start-up: each version's store
    reference (model_ref_<i>: what `bentoml build` packs into a Bento) and each model's infer API."""
    return {**{f"model_ref_{i}": bentoml.models.BentoModel(str(m.tag)) for i, m in enumerate(selection.models)},
            **{infer_api_name(name, selection.default_name): infer_api(name, selection, max_batch_size)
               for name in selection.names}}
