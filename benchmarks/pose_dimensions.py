"""How many pose dimensions visibly change the drawing (issue 11, item 5): the paper's Fig. 4 test,
measured. For each of --digits MNIST test digits, every dimension of the winning capsule's pose is
moved to -0.25 and +0.25 and both are redrawn (decoder.onnx); a dimension is *visible* when, on
average over the digits, a stroke-sized area (3 % of the pixels, 24 of 784) differs by more than 0.3
(77 of 255 grey levels) between the two drawings. (Calibrated by eye on the quick model's grid: with
a 0.1 threshold and 1 % every dimension counted, though only one visibly changed the digit.)
*Distinct*: the mean |cosine| between the difference images of two visible dimensions
(0: unrelated changes, 1: the same change).

    python benchmarks/pose_dimensions.py EXPORT_DIR [EXPORT_DIR ...] [--digits 200]

EXPORT_DIR: a capsnet export folder made with the explorer's graphs (the default) (model.onnx, decoder.onnx).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from training.data import DATA_DIR_HELP, load_split

VISIBLE_PIXEL_CHANGE = 0.3
VISIBLE_SHARE = 0.03


def dimension_effects(export_dir: Path, images: np.ndarray, delta: float = 0.25) -> dict:
    """Per pose dimension: the share of pixels that change visibly, and how distinct the changes are.
    images: float32 [N, 1, 28, 28]."""
    model = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(export_dir / "decoder.onnx"), providers=["CPUExecutionProvider"])
    probabilities, poses = model.run(["probabilities", "poses"], {"image": images})
    n, _, dims = poses.shape
    labels = probabilities.argmax(1)
    shares, differences = [], []
    for d in range(dims):
        drawings = []
        for sign in (-1, 1):
            moved = poses.copy()
            moved[np.arange(n), labels, d] += sign * delta
            drawings.append(decoder.run(["image"], {"poses": moved, "label": labels.astype(np.int64)})[0])
        change = (drawings[1] - drawings[0]).reshape(n, -1)
        shares.append(float((np.abs(change) > VISIBLE_PIXEL_CHANGE).mean()))
        differences.append(change)
    visible = [d for d in range(dims) if shares[d] >= VISIBLE_SHARE]
    cosines = []
    for i, a in enumerate(visible):
        for b in visible[i + 1:]:
            x, y = differences[a], differences[b]
            cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)
            cosines.append(float(np.abs(cos).mean()))
    return {"export": str(export_dir), "dimensions": dims, "visible": len(visible),
            "visible_dimensions": visible, "changed_pixel_share": [round(s, 4) for s in shares],
            "mean_abs_cosine_between_visible": round(float(np.mean(cosines)), 3) if cosines else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", type=Path)
    p.add_argument("--digits", type=int, default=200)
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = p.parse_args()
    images, _ = load_split("mnist", "test", args.data_dir)
    batch = images[:args.digits].numpy().astype(np.float32) / 255.0
    for export in args.exports:
        r = dimension_effects(export, batch)
        print(f"{export}: {r['visible']} of {r['dimensions']} pose dimensions visibly change the drawing "
              f"(mean |cos| between them {r['mean_abs_cosine_between_visible']})")
        print(json.dumps(r))


if __name__ == "__main__":
    main()
