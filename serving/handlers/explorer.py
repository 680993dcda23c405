"""What the capsule explorer shows, without BentoML: explanations (reconstruction and part-whole
map), redrawing edited poses, the paper's Fig. 4 perturbation grid, and equivariance strips.

Torch-free like serving/handlers/classify.py; the APIs in serving/service.py (and through them the page
in serving/explorer_page/) call one function per request. They run the model's ONNX Runtime sessions
directly, not through the batcher: their answers are large and interactive, not a throughput path (each
request still counts against its model's admission, serving/bento/admission_gate.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from serving.engine.facts import EXPLAIN_OUTPUTS, POSES, PRIMARY_LENGTHS, PROBABILITIES, RECONSTRUCTION, ROUTING
from serving.engine.version import ModelVersion
from serving.errors import CapabilityError, InputError
from serving.handlers.classify import Answered, Classifier, Prediction, require_finite
from serving.handlers.validation import validate_images, validate_label, validate_poses

# The paper's Fig. 4: each pose dimension moved from -0.25 to +0.25 in steps of 0.05 (11 columns).
PERTURBATION_DELTAS = tuple(round(-0.25 + 0.05 * k, 2) for k in range(11))
MAX_SHIFT, MAX_ROTATION = 6, 90.0  # equivariance limits a request may ask for
ROTATION_STEPS = 7  # angles per rotation strip, -theta..theta


class ReceptiveField(BaseModel):
    size: int = Field(description="side of the square input patch one grid cell sees (17 for 28x28 input)")
    centres: list[float] = Field(description="input coordinate of the patch centre of grid row/column i "
                                             "(rows and columns alike: 8 + 2i for 28x28 input)")


class PartWhole(BaseModel):
    mass: list[list[list[list[float]]]] = Field(
        description="[classes][capsule types][grid][grid]: how much of each primary capsule (part) is routed "
                    "to each class capsule (whole): its final coupling coefficient times its length")
    grid_mass: list[list[list[float]]] = Field(description="[classes][grid][grid]: `mass` summed over types")
    receptive_field: ReceptiveField


class Explanation(Prediction):
    input: list[list[list[float]]] = Field(description="[1][S][S] the image the model saw (uploads: after "
                                                       "preparation)")
    reconstruction: list[list[list[float]]] = Field(description="[1][S][S] the decoder's drawing from the "
                                                                "longest capsule")
    part_whole: PartWhole


class Reconstructions(BaseModel):
    labels: list[int] = Field(description="the class each drawing was masked to")
    images: list[list[list[list[float]]]] = Field(description="[N][1][S][S] drawings in [0, 1]")


class Perturbation(BaseModel):
    label: int = Field(description="the class capsule that was perturbed")
    class_name: str
    pose: list[float] = Field(description="that capsule's own pose")
    deltas: list[float] = Field(description="what was added to one dimension at a time (columns)")
    images: list[list[list[list[float]]]] = Field(description="[pose dims][deltas][S][S]: row d, column k is the "
                                                              "drawing with dimension d moved by deltas[k] "
                                                              "(5 decimals)")


class TransformedView(BaseModel):
    value: float = Field(description="the shift in pixels or the rotation in degrees (counter-clockwise)")
    image: list[list[float]] = Field(description="[S][S] the transformed input (5 decimals)")
    label: int
    class_name: str
    length: float = Field(description="length of the longest capsule")
    pose: list[float] = Field(description="pose of the capsule of the untransformed input's class")


class Strip(BaseModel):
    kind: str = Field(description="shift_x, shift_y (pixels) or rotation (degrees)")
    views: list[TransformedView]


class Equivariance(BaseModel):
    label: int = Field(description="the class of the untransformed input")
    class_name: str
    class_kept: float = Field(description="share of the transformed inputs still given that class")
    strips: list[Strip]


def receptive_field(model_config: dict[str, Any]) -> ReceptiveField:
    """Where each primary-capsule grid cell looks: conv1 (stride 1) then the primary convolution
    (kernel k2, stride s2) see k1 + k2 - 1 input pixels, centred at (size - 1) / 2 + s2 * i."""
    size = model_config["conv1_kernel"] + model_config["primary_kernel"] - 1
    image, stride = model_config["image_size"], model_config["primary_stride"]
    grid = ((image - model_config["conv1_kernel"] + 1) - model_config["primary_kernel"]) // stride + 1
    return ReceptiveField(size=size, centres=[(size - 1) / 2 + stride * i for i in range(grid)])


def part_whole_mass(routing: np.ndarray, primary_lengths: np.ndarray, types: int, grid: int) -> np.ndarray:
    """routing [N_in, K] (coupling of each primary capsule to each class), primary_lengths [N_in]
    -> [K, types, grid, grid]. Primary capsules are ordered type-major, then row, then column
    (training/model.py: primary_capsules)."""
    mass = routing * primary_lengths[:, None]  # [N_in, K]
    return mass.reshape(types, grid, grid, -1).transpose(3, 0, 1, 2)


def require_explorer_outputs(model: ModelVersion) -> None:
    """CapabilityError unless `model` was exported with the explorer's outputs."""
    missing = [name for name in EXPLAIN_OUTPUTS if name not in model.facts.graph_outputs]
    if missing:
        raise CapabilityError(f"model {model.name} was exported without the explorer's outputs ({', '.join(missing)}); "
                              "export it again without --no-explorer")


def explanations(classifier: Classifier, model: ModelVersion, batch: np.ndarray) -> list[Explanation]:
    """Validated images [N, 1, S, S] for a model with the explorer's outputs -> per image, what
    classify returns plus the reconstruction and the part-whole map."""
    outputs = model.runtime.run([*model.facts.served_outputs, *EXPLAIN_OUTPUTS], batch)
    require_finite(*outputs.values())
    predictions = classifier.predictions(outputs, model, reconstructions=model.facts.reconstructs)
    config = model.facts.config["model_config"]
    field = receptive_field(config)
    grid = len(field.centres)
    answers = []
    for i, prediction in enumerate(predictions):
        mass = part_whole_mass(outputs[ROUTING][i], outputs[PRIMARY_LENGTHS][i], config["primary_types"], grid)
        answers.append(Explanation(
            **prediction.model_dump(), input=batch[i].tolist(), reconstruction=outputs[RECONSTRUCTION][i].tolist(),
            part_whole=PartWhole(mass=mass.tolist(), grid_mass=mass.sum(1).tolist(), receptive_field=field)))
    return answers


def explain(classifier: Classifier, tag: str | None, images: Any) -> Answered[list[Explanation]]:
    """An explain request: client arrays for the version `tag` names -> its explanations."""
    model = classifier.model_named(tag)
    require_explorer_outputs(model)
    return Answered(model.tag, explanations(classifier, model, classifier.validate(images, model)))


def explain_uploads(classifier: Classifier, tag: str | None, files: list[bytes]) -> Answered[list[Explanation]]:
    """An explain_image request: encoded files, prepared as classify_image prepares them."""
    model = classifier.model_named(tag)
    batch = classifier.decode_uploads(files, model)
    require_explorer_outputs(model)
    return Answered(model.tag, explanations(classifier, model, batch))


def require_decoder(model: ModelVersion) -> None:
    """CapabilityError unless `model` was exported with its decoder graph."""
    if model.runtime.decoder is None:
        raise CapabilityError(f"model {model.name} was exported without a decoder graph; "
                              "export it again without --no-explorer")


def reconstruct(classifier: Classifier, tag: str | None, poses: Any, label: int | None) -> Answered[Reconstructions]:
    """Poses [N, K, D] (+ the class to draw, default: each set's longest capsule) -> the decoder's drawings."""
    model = classifier.model_named(tag)
    require_decoder(model)
    facts = model.facts
    array, chosen = validate_poses(poses, label, classifier.settings.max_batch_size, len(facts.class_names),
                                   facts.pose_dim)
    images = model.runtime.decode(array, chosen)
    require_finite(images)
    return Answered(model.tag, Reconstructions(labels=chosen.tolist(), images=images.tolist()))


def one_image(model: ModelVersion, image: Any) -> np.ndarray:
    """One client image [S, S] or [1, S, S] -> float32 [1, 1, S, S]."""
    if np.ndim(image) not in (2, 3):
        raise InputError(f"image must be one image [S, S] or [1, S, S], got shape {list(np.shape(image))}")
    return validate_images([image], 1, model.facts.image_size)


def perturb(classifier: Classifier, tag: str | None, image: Any, label: int | None) -> Answered[Perturbation]:
    """One image -> the paper's Fig. 4 grid for capsule `label` (default: the longest)."""
    model = classifier.model_named(tag)
    require_decoder(model)
    batch = one_image(model, image)
    facts = model.facts
    outputs = model.runtime.run([PROBABILITIES, POSES], batch)
    probabilities, poses = outputs[PROBABILITIES][0], outputs[POSES][0]
    chosen = int(probabilities.argmax()) if label is None else validate_label(label, len(facts.class_names))
    deltas = np.asarray(PERTURBATION_DELTAS, np.float32)
    edited = np.repeat(poses[None], facts.pose_dim * len(deltas), axis=0)  # [D * 11, K, D]
    rows = np.repeat(np.arange(facts.pose_dim), len(deltas))
    edited[np.arange(len(edited)), chosen, rows] += np.tile(deltas, facts.pose_dim)
    images = model.runtime.decode(edited, np.full(len(edited), chosen, np.int64))
    require_finite(images)
    s = facts.image_size
    # 5 decimals (within 5e-6): the grid is 16 x 11 images, and full float reprs would triple its size
    grid = images.reshape(facts.pose_dim, len(deltas), s, s).astype(np.float64).round(5)
    return Answered(model.tag, Perturbation(label=chosen, class_name=facts.class_names[chosen],
                                            pose=poses[chosen].tolist(), deltas=list(PERTURBATION_DELTAS),
                                            images=grid.tolist()))


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """[S, S] moved by (dy, dx) pixels, zero-filled: out[y, x] = image[y - dy, x - dx]."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    """[S, S] rotated counter-clockwise about its centre, bilinear, zero-filled."""
    turned = Image.fromarray(image.astype(np.float32)).rotate(degrees, resample=Image.BILINEAR, fillcolor=0.0)
    return np.clip(np.asarray(turned, np.float32), 0.0, 1.0)


def equivariance(classifier: Classifier, tag: str | None, image: Any, max_shift: int,
                 max_rotation: float) -> Answered[Equivariance]:
    """One image -> strips of it shifted along x and y by -max_shift..max_shift pixels and rotated by
    -max_rotation..max_rotation degrees, each with its predicted class, winning length and the pose of
    the original class's capsule (the pose should move, the class should not)."""
    model = classifier.model_named(tag)
    if not 0 <= max_shift <= MAX_SHIFT or not 0 <= max_rotation <= MAX_ROTATION:
        raise InputError(f"max_shift must lie in [0, {MAX_SHIFT}] and max_rotation in [0, {MAX_ROTATION:g}]")
    base = one_image(model, image)[0, 0]
    shifts = list(range(-max_shift, max_shift + 1))
    angles = np.linspace(-max_rotation, max_rotation, ROTATION_STEPS).round(3).tolist()
    plan = [("shift_x", v, shifted(base, 0, v)) for v in shifts] \
        + [("shift_y", v, shifted(base, v, 0)) for v in shifts] + [("rotation", v, rotated(base, v)) for v in angles]
    batch = np.stack([base, *(im for _, _, im in plan)])[:, None]  # [1 + views, 1, S, S], the original first
    outputs = model.runtime.run([PROBABILITIES, POSES], batch)
    require_finite(*outputs.values())
    probabilities, poses = outputs[PROBABILITIES], outputs[POSES]
    names = model.facts.class_names
    original = int(probabilities[0].argmax())
    views: dict[str, list[TransformedView]] = {}
    for k, (kind, value, im) in enumerate(plan, start=1):
        label = int(probabilities[k].argmax())
        views.setdefault(kind, []).append(TransformedView(
            value=value, image=im.astype(np.float64).round(5).tolist(), label=label,
            class_name=names[label], length=float(probabilities[k, label]),
            pose=poses[k, original].tolist()))
    kept = float((probabilities[1:].argmax(1) == original).mean())
    return Answered(model.tag, Equivariance(label=original, class_name=names[original], class_kept=kept,
                                            strips=[Strip(kind=kind, views=v) for kind, v in views.items()]))
