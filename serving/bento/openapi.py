"""The OpenAPI document's parts that are ours: the JSON schemas of images and poses the API types
publish (what serving/handlers/validation.py accepts), and `complete_openapi`, which says what
BentoML's generated document leaves out."""

from __future__ import annotations

from typing import Any

from serving.handlers.validation import MNIST_SIZE, POSE_LIMIT

READ_ONLY = ("/metadata",)  # APIs that only read: served and documented as GET (middleware.ReadOnlyRoutes)
# APIs whose answer needs something the named model may have been exported without (reconstructions,
# the explorer's graphs): they can answer 422 (serving/errors.py: CapabilityError)
CAPABILITY_ROUTES = ("/classify", "/classify_image", "/explain", "/explain_image", "/reconstruct", "/perturb")


def image_layouts(sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """JSON schemas of one image: [S][S] and [1][S][S] numbers in [0, 1], for each side S in `sizes`."""
    pixel = {"type": "number", "minimum": 0, "maximum": 1}
    layouts = []
    for size in sizes:
        row = {"type": "array", "items": pixel, "minItems": size, "maxItems": size}
        image = {"type": "array", "items": row, "minItems": size, "maxItems": size}
        layouts += [image, {"type": "array", "items": image, "minItems": 1, "maxItems": 1}]
    return layouts


def image_json_schema(sizes: tuple[int, ...] = (MNIST_SIZE,)) -> dict[str, Any]:
    """One image, [S][S] or [1][S][S], pixels in [0, 1] (the explorer's APIs)."""
    shapes = " or ".join(f"[{s}][{s}] or [1][{s}][{s}]" for s in sizes)
    return {"oneOf": image_layouts(sizes), "description": f"one image, {shapes} (the model's input size), "
                                                          "pixels in [0, 1]"}


def images_json_schema(max_images: int, sizes: tuple[int, ...] = (MNIST_SIZE,)) -> dict[str, Any]:
    """The JSON schema of what validate_images accepts from JSON: [N, S, S] or [N, 1, S, S] numbers
    in [0, 1], 1 <= N <= max_images, S one of `sizes` (the served models' input sides; published in
    the OpenAPI document for clients)."""
    shapes = " or ".join(f"[N][{s}][{s}] or [N][1][{s}][{s}]" for s in sizes)
    # oneOf, not anyOf: BentoML flattens an anyOf to its first member (its way of handling Optional)
    return {"oneOf": [{"type": "array", "items": layout, "minItems": 1, "maxItems": max_images}
                      for layout in image_layouts(sizes)],
            "description": f"1 to {max_images} images, {shapes} (the model's input size), pixels in [0, 1]"}


def poses_json_schema(max_items: int, shapes: tuple[tuple[int, int], ...]) -> dict[str, Any]:
    """The JSON schema of what validate_poses accepts: [N][K][D] numbers in [-10, 10], 1 <= N <=
    max_items, (K, D) one of `shapes` (the served models' capsule counts and pose sizes)."""
    value = {"type": "number", "minimum": -POSE_LIMIT, "maximum": POSE_LIMIT}
    return {"oneOf": [{"type": "array", "minItems": 1, "maxItems": max_items, "items": {
        "type": "array", "minItems": k, "maxItems": k,
        "items": {"type": "array", "items": value, "minItems": d, "maxItems": d}}} for k, d in shapes],
        "description": f"1 to {max_items} sets of capsule poses [N][classes][pose dims], values in "
                       f"[-{POSE_LIMIT:g}, {POSE_LIMIT:g}]"}


def complete_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """Say what BentoML's generated document leaves out: a request body with required fields is
    itself required, every API can answer 413 (body too large) and 503 (overloaded), and those that need
    a capability of the named model 422."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/InternalServerError"}}}}
    for route in READ_ONLY:  # served as GET, without a body (ReadOnlyRoutes)
        operations = spec.get("paths", {}).get(route, {})
        if "post" in operations:
            operations["get"] = operations.pop("post")
            operations["get"].pop("requestBody", None)
    for route, path in spec.get("paths", {}).items():
        operation = path.get("post")
        if not operation or "x-bentoml-name" not in operation:
            continue
        body = operation.get("requestBody", {})
        if any(media.get("schema", {}).get("required") for media in body.get("content", {}).values()):
            body["required"] = True
        responses = operation.setdefault("responses", {})
        responses.setdefault("413", {"description": "Request body over CAPSNET_MAX_REQUEST_BYTES", **error})
        if route in CAPABILITY_ROUTES:
            responses.setdefault("422", {"description": "The named model was exported without what this "
                                                        "needs (reconstructions, the explorer's graphs)", **error})
        responses.setdefault("503", {"description": "Overloaded: the model already had CAPSNET_MAX_QUEUE "
                                                    "requests, or this one waited longer than "
                                                    "CAPSNET_MAX_LATENCY_MS; retry after Retry-After seconds",
                                     **error})
    return spec
